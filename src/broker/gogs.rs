//! Identity and credentials toward Gogs.
//!
//! Gogs honours the reverse-proxy header only on its web UI; git over HTTP and most of its API
//! read nothing but Basic credentials. So:
//! - web pages get `X-WEBAUTH-USER` (configurable) with the caller's username, lower-cased and
//!   checked (`[a-z0-9._-]`, at most 40 characters), and no `Authorization`;
//! - git and API requests get the Basic credential the gateway holds (the first configured one
//!   whose groups/clients match the caller), after the gateway authenticated the person;
//! - Gogs's own cookies (its session carries its CSRF state) are sealed to the person they
//!   were issued to on the way out and restored only for that person on the way in; raw Gogs
//!   cookies from the client, or sealed ones of somebody else, are dropped;
//! - Gogs's sign-in and sign-out pages are the gateway's.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::config::{GogsBroker, SecretError};
use crate::identity::challenge::is_git;
use crate::identity::cookies::{self, Attributes};
use crate::identity::session::SessionCodec;
use crate::identity::{Caller, Identity};
use crate::proxy::response::ResponseBody;

/// Longest username passed to Gogs.
const MAX_USERNAME: usize = 40;

/// What kind of Gogs request this is, as far as credentials go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Web,
    Git,
    Api,
}

pub fn surface(parts: &Parts) -> Surface {
    if is_git(parts) {
        Surface::Git
    } else if crate::proxy::path::has_prefix(parts.uri.path(), "/api") {
        Surface::Api
    } else {
        Surface::Web
    }
}

/// The Gogs username for an identity, or why there is none.
pub fn username(identity: &Identity) -> Result<String, &'static str> {
    let raw = identity
        .username
        .as_deref()
        .ok_or("the identity has no username claim")?;
    let name = raw.to_ascii_lowercase();
    if name.is_empty() || name.len() > MAX_USERNAME {
        return Err("the username is empty or longer than 40 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(
            "the username has characters Gogs does not allow (only a-z, 0-9, '.', '_', '-')",
        );
    }
    if name.starts_with(['.', '-']) {
        return Err("the username starts with '.' or '-'");
    }
    Ok(name)
}

/// The Gogs broker with its secrets loaded once, ready to be attached to requests.
pub struct GogsRuntime {
    user_header: http::HeaderName,
    credentials: Vec<LoadedCredential>,
}

struct LoadedCredential {
    groups: Vec<String>,
    clients: Vec<String>,
    authorization: HeaderValue,
}

impl GogsRuntime {
    pub fn load(broker: &GogsBroker) -> Result<GogsRuntime, SecretError> {
        let mut credentials = Vec::new();
        for c in &broker.credentials {
            let token = c.token.load()?;
            let basic = STANDARD.encode(format!("{}:{}", c.username, token.expose()));
            let mut authorization = HeaderValue::from_str(&format!("Basic {basic}"))
                .map_err(|_| SecretError::NotUtf8(c.token.clone()))?;
            authorization.set_sensitive(true);
            credentials.push(LoadedCredential {
                groups: c.groups.clone(),
                clients: c.clients.clone(),
                authorization,
            });
        }
        Ok(GogsRuntime {
            user_header: broker.user_header.clone(),
            credentials,
        })
    }

    pub fn user_header(&self) -> &http::HeaderName {
        &self.user_header
    }
}

/// A sealed Gogs cookie: whose it is and what Gogs set.
#[derive(Serialize, Deserialize)]
struct Sealed {
    sub: String,
    name: String,
    value: String,
}

const COOKIE_PURPOSE: &str = "gatehouse gogs cookie";

/// The gateway's answer for Gogs pages it takes over, if this is one.
pub fn takeover(parts: &Parts) -> Option<Response<ResponseBody>> {
    let path = parts.uri.path();
    let target = match path {
        "/user/logout" => "/.gatehouse/logout",
        "/user/login" | "/user/sign_up" | "/user/forget_password" => "/",
        _ => return None,
    };
    let mut r = Response::new(ResponseBody::empty());
    *r.status_mut() = if parts.method == Method::GET || parts.method == Method::HEAD {
        StatusCode::FOUND
    } else {
        StatusCode::SEE_OTHER
    };
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(target));
    Some(r)
}

/// Whether the gateway can broker this request for this caller at all, decided before the
/// request's decision is written: a web page (other than the ones the gateway takes over)
/// needs a username Gogs accepts. `Err` carries the reason for the 403, so the record says
/// the request was refused, not allowed.
pub fn admissible(parts: &Parts, identity: &Identity) -> Result<(), &'static str> {
    if surface(parts) != Surface::Web || takeover(parts).is_some() {
        return Ok(());
    }
    username(identity).map(|_| ())
}

/// Rewrites the request for Gogs. `Err` carries the reason for a 403.
pub fn request(
    parts: &mut Parts,
    broker: &GogsRuntime,
    caller: &Caller,
    host: &str,
    sessions: Option<&SessionCodec>,
) -> Result<Surface, &'static str> {
    parts.headers.remove(&broker.user_header);
    let surface = surface(parts);
    restore_cookies(
        &mut parts.headers,
        &caller.identity,
        host,
        sessions.filter(|_| surface == Surface::Web),
    );
    match surface {
        Surface::Web => {
            let name = username(&caller.identity)?;
            let value = HeaderValue::from_str(&name)
                .map_err(|_| "the username is not a valid header value")?;
            parts.headers.insert(broker.user_header.clone(), value);
        }
        Surface::Git | Surface::Api => {
            if let Some(cred) = broker.credentials.iter().find(|c| {
                (c.groups.is_empty() || c.groups.iter().any(|g| caller.identity.groups.contains(g)))
                    && (c.clients.is_empty()
                        || caller
                            .identity
                            .client_id
                            .as_ref()
                            .is_some_and(|id| c.clients.contains(id)))
            }) {
                parts
                    .headers
                    .insert(header::AUTHORIZATION, cred.authorization.clone());
            }
        }
    }
    Ok(surface)
}

/// Replaces the Cookie header with the Gogs cookies this caller owns (web requests only).
fn restore_cookies(
    headers: &mut HeaderMap,
    identity: &Identity,
    host: &str,
    sessions: Option<&SessionCodec>,
) {
    let restored = cookies::filtered(headers, |name, value| {
        let codec = sessions?;
        let original = name.strip_prefix(cookies::GOGS_PREFIX)?;
        let plain = codec.open(COOKIE_PURPOSE, host, value)?;
        let sealed: Sealed = serde_json::from_slice(&plain).ok()?;
        (sealed.sub == identity.subject && sealed.name == original)
            .then(|| format!("{}={}", sealed.name, sealed.value))
    });
    headers.remove(header::COOKIE);
    if let Some(v) = restored {
        headers.insert(header::COOKIE, v);
    }
}

/// Seals Gogs's `Set-Cookie`s to the caller (web) or drops them (git, API).
pub fn response(
    headers: &mut HeaderMap,
    surface: Surface,
    identity: &Identity,
    host: &str,
    sessions: Option<&SessionCodec>,
) {
    let set: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    let (Surface::Web, Some(codec)) = (surface, sessions) else {
        return;
    };
    for value in set {
        let Ok(text) = value.to_str() else { continue };
        let mut attrs = text.split(';');
        let Some((name, val)) = attrs.next().and_then(|p| p.trim().split_once('=')) else {
            continue;
        };
        let name = name.trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            continue;
        }
        let mut max_age: Option<u64> = None;
        let mut delete = false;
        for attr in attrs {
            let (k, v) = attr.trim().split_once('=').unwrap_or((attr.trim(), ""));
            if k.eq_ignore_ascii_case("max-age") {
                match v.trim().parse::<i64>() {
                    Ok(n) if n <= 0 => delete = true,
                    Ok(n) => max_age = Some(n as u64),
                    Err(_) => {}
                }
            } else if k.eq_ignore_ascii_case("expires") && httpdate_in_past(v) {
                delete = true;
            }
        }
        let our_name = format!("{}{name}", cookies::GOGS_PREFIX);
        let out = if delete || val.trim().is_empty() {
            cookies::delete(&our_name)
        } else {
            let sealed = Sealed {
                sub: identity.subject.clone(),
                name: name.to_string(),
                value: val.trim().to_string(),
            };
            let blob = codec.seal(
                COOKIE_PURPOSE,
                host,
                &serde_json::to_vec(&sealed).unwrap_or_default(),
            );
            cookies::set(
                &our_name,
                &blob,
                Attributes {
                    max_age,
                    same_site_lax: true,
                },
            )
        };
        headers.append(header::SET_COOKIE, out);
    }
}

/// `Set-Cookie` values deleting every sealed Gogs cookie the request carries (logout).
pub fn clear_cookies(headers: &HeaderMap) -> Vec<HeaderValue> {
    cookies::pairs(headers)
        .filter(|(n, _)| n.starts_with(cookies::GOGS_PREFIX))
        .map(|(n, _)| cookies::delete(n))
        .collect()
}

fn httpdate_in_past(text: &str) -> bool {
    httpdate::parse_http_date(text.trim()).is_ok_and(|t| t <= std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BrokerCredential, SecretRef};
    use std::sync::Arc;

    fn identity(sub: &str, username: &str) -> Identity {
        Identity {
            subject: sub.into(),
            issuer: "https://idp".into(),
            username: Some(username.into()),
            email: None,
            email_verified: false,
            groups: vec!["engineering".into()],
            client_id: None,
            expires_at: 0,
        }
    }

    fn caller(sub: &str, username: &str) -> Caller {
        Caller {
            identity: Arc::new(identity(sub, username)),
            method: crate::identity::AuthMethod::Session,
            set_cookies: Vec::new(),
        }
    }

    fn codec() -> SessionCodec {
        let ring = crate::identity::keyring::KeyRing::parse(
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .unwrap();
        SessionCodec::new(
            Arc::new(ring),
            crate::config::SessionConfig {
                keys: SecretRef::Env("X".into()),
                absolute_lifetime: std::time::Duration::from_secs(3600),
                idle_lifetime: std::time::Duration::from_secs(600),
                refresh_before: std::time::Duration::from_secs(60),
            },
        )
    }

    fn broker(token: SecretRef) -> GogsRuntime {
        GogsRuntime::load(&GogsBroker {
            user_header: http::HeaderName::from_static("x-webauth-user"),
            credentials: vec![BrokerCredential {
                username: "broker".into(),
                token,
                groups: vec![],
                clients: vec![],
            }],
        })
        .unwrap()
    }

    fn no_credentials() -> GogsRuntime {
        GogsRuntime::load(&GogsBroker {
            user_header: http::HeaderName::from_static("x-webauth-user"),
            credentials: vec![],
        })
        .unwrap()
    }

    fn parts(path: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn usernames_are_lower_cased_and_checked() {
        assert_eq!(
            username(&identity("s", "Alice.Example")).unwrap(),
            "alice.example"
        );
        for bad in [
            "Mallory<script>",
            "a b",
            "",
            "-lead",
            &"x".repeat(41),
            "ålice",
        ] {
            assert!(username(&identity("s", bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_web_pages_need_a_username_gogs_accepts() {
        let bad = identity("s", "Mallory<script>");
        assert!(admissible(&parts("/platform/app", &[]), &bad).is_err());
        assert!(admissible(&parts("/platform/app", &[]), &identity("s", "alice")).is_ok());
        // Git and the API get the broker's credential; the gateway's own pages need no name.
        let git = parts(
            "/platform/app.git/info/refs?service=git-upload-pack",
            &[("user-agent", "git/2.47")],
        );
        assert!(admissible(&git, &bad).is_ok());
        assert!(admissible(&parts("/api/v1/user", &[]), &bad).is_ok());
        assert!(admissible(&parts("/user/logout", &[]), &bad).is_ok());
    }

    #[test]
    fn web_requests_carry_exactly_one_identity_header() {
        let mut p = parts(
            "/platform/app",
            &[
                ("x-webauth-user", "admin"),
                ("X-WEBAUTH-USER", "root"),
                ("accept", "text/html"),
            ],
        );
        let s = request(
            &mut p,
            &no_credentials(),
            &caller("sub-a", "Alice"),
            "h",
            None,
        )
        .unwrap();
        assert_eq!(s, Surface::Web);
        let values: Vec<_> = p.headers.get_all("x-webauth-user").iter().collect();
        assert_eq!(values, ["alice"]);
        assert!(p.headers.get(header::AUTHORIZATION).is_none());
    }

    #[test]
    fn git_requests_get_the_broker_credential_not_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken\n").unwrap();
        let mut p = parts(
            "/platform/app.git/info/refs?service=git-upload-pack",
            &[("user-agent", "git/2.47")],
        );
        let s = request(
            &mut p,
            &broker(SecretRef::File(token)),
            &caller("sub-a", "alice"),
            "h",
            None,
        )
        .unwrap();
        assert_eq!(s, Surface::Git);
        assert!(p.headers.get("x-webauth-user").is_none());
        assert_eq!(
            p.headers[header::AUTHORIZATION],
            format!("Basic {}", STANDARD.encode("broker:t0ken"))
        );
    }

    #[test]
    fn gogs_cookies_are_sealed_to_their_owner() {
        let codec = codec();
        let mut resp = HeaderMap::new();
        resp.append(
            header::SET_COOKIE,
            HeaderValue::from_static("i_like_gogs=abc123; Path=/; HttpOnly"),
        );
        resp.append(
            header::SET_COOKIE,
            HeaderValue::from_static("_csrf=; Path=/; Max-Age=0"),
        );
        let alice = identity("sub-a", "alice");
        response(
            &mut resp,
            Surface::Web,
            &alice,
            "git.example.com",
            Some(&codec),
        );
        let set: Vec<String> = resp
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert!(
            set[0].starts_with("__Host-gatehouse-g-i_like_gogs=") && !set[0].contains("abc123")
        );
        assert!(set[1].starts_with("__Host-gatehouse-g-_csrf=;") && set[1].contains("Max-Age=0"));
        let sealed = set[0].split(';').next().unwrap().to_string();

        // Alice gets her cookie back; Bob presenting it, or anyone sending raw Gogs cookies, gets nothing.
        let mut p = parts(
            "/",
            &[(
                "cookie",
                &format!("{sealed}; i_like_gogs=planted; __Host-gatehouse=s"),
            )],
        );
        restore_cookies(&mut p.headers, &alice, "git.example.com", Some(&codec));
        assert_eq!(p.headers[header::COOKIE], "i_like_gogs=abc123");
        let mut p = parts("/", &[("cookie", &sealed)]);
        restore_cookies(
            &mut p.headers,
            &identity("sub-b", "bob"),
            "git.example.com",
            Some(&codec),
        );
        assert!(p.headers.get(header::COOKIE).is_none());
        let mut p = parts("/", &[("cookie", &sealed)]);
        restore_cookies(&mut p.headers, &alice, "other.example.com", Some(&codec));
        assert!(p.headers.get(header::COOKIE).is_none());
    }

    #[test]
    fn git_responses_never_set_cookies() {
        let mut resp = HeaderMap::new();
        resp.append(
            header::SET_COOKIE,
            HeaderValue::from_static("i_like_gogs=abc; Path=/"),
        );
        response(
            &mut resp,
            Surface::Git,
            &identity("s", "a"),
            "h",
            Some(&codec()),
        );
        assert!(resp.get(header::SET_COOKIE).is_none());
    }

    #[test]
    fn gogs_sign_in_and_out_pages_are_taken_over() {
        let r = takeover(&parts("/user/logout", &[])).unwrap();
        assert_eq!(r.headers()[header::LOCATION], "/.gatehouse/logout");
        assert!(takeover(&parts("/user/settings", &[])).is_none());
    }
}
