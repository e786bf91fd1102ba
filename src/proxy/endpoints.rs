//! The gateway's own endpoints under `/.gatehouse/`, answered before routing and never
//! forwarded, whatever the route table says:
//!
//! | path | what |
//! |---|---|
//! | `/.gatehouse/health` | the process answers |
//! | `/.gatehouse/ready` | it accepts new work (503 while draining) |
//! | `/.gatehouse/oidc/login?return_to=` | start signing in |
//! | `/.gatehouse/oidc/callback` | the provider sends people back here |
//! | `/.gatehouse/logout` | GET: confirmation page; POST (CSRF-checked): sign out |
//! | `/.gatehouse/jwks.json` | public key of the identity assertion |
//! | `/.gatehouse/cli.json` | what `gatehouse login` needs (issuer, public client id) |

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::RequestContext;
use super::audit::Draft;
use super::error::ProxyError;
use super::response::{ResponseBody, plain};
use crate::audit::Kind;
use crate::broker::gogs;
use crate::identity::AuthMethod;
use crate::identity::oidc::{LoginError, url_decode_pairs};
use crate::identity::redirect::safe_return_to;
use crate::identity::{cookies, pages};

/// Path prefix reserved for the gateway.
pub const PREFIX: &str = "/.gatehouse";

pub fn is_gateway_path(path: &str) -> bool {
    super::path::has_prefix(path, PREFIX)
}

fn get_only(method: &Method) -> Result<(), ProxyError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(ProxyError::EndpointMethod { allow: "GET, HEAD" })
    }
}

fn with(
    status: StatusCode,
    content_type: &'static str,
    body: String,
    ctx: &RequestContext<'_>,
) -> Response<ResponseBody> {
    let mut r = plain(status, body, ctx.request_id);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn html(status: StatusCode, body: String, ctx: &RequestContext<'_>) -> Response<ResponseBody> {
    let mut r = with(status, "text/html; charset=utf-8", body, ctx);
    let h = r.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    r
}

fn redirect(
    status: StatusCode,
    location: &str,
    ctx: &RequestContext<'_>,
) -> Response<ResponseBody> {
    let mut r = plain(status, String::new(), ctx.request_id);
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

pub async fn serve(
    req: Request<Incoming>,
    ctx: &RequestContext<'_>,
    draining: bool,
    draft: &mut Draft,
) -> Result<Response<ResponseBody>, ProxyError> {
    let path = req.uri().path().to_string();
    let sub = &path[PREFIX.len()..];
    let identity = &ctx.rt.identity;
    // Probes and public metadata are not decisions about anyone: not audited.
    draft.skip = matches!(sub, "/health" | "/ready" | "/jwks.json" | "/cli.json")
        && (req.method() == Method::GET || req.method() == Method::HEAD);
    match sub {
        "/health" => {
            get_only(req.method())?;
            Ok(plain(StatusCode::OK, "ok\n".into(), ctx.request_id))
        }
        "/ready" => {
            get_only(req.method())?;
            Ok(if draining {
                plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "draining\n".into(),
                    ctx.request_id,
                )
            } else {
                plain(StatusCode::OK, "ready\n".into(), ctx.request_id)
            })
        }
        "/jwks.json" => {
            get_only(req.method())?;
            let a = identity
                .assertion
                .as_ref()
                .ok_or(ProxyError::UnknownEndpoint)?;
            Ok(with(
                StatusCode::OK,
                "application/jwk-set+json",
                a.jwks(),
                ctx,
            ))
        }
        "/cli.json" => {
            get_only(req.method())?;
            let oidc = identity.oidc.as_ref().ok_or(ProxyError::UnknownEndpoint)?;
            let client_id = oidc
                .config
                .cli_client_id
                .as_ref()
                .ok_or(ProxyError::UnknownEndpoint)?;
            let mut scopes = vec!["openid", "offline_access"];
            scopes.extend(
                oidc.config
                    .scopes
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !matches!(*s, "openid" | "offline_access")),
            );
            let doc = serde_json::json!({"issuer": oidc.config.issuer, "client_id": client_id, "scopes": scopes});
            Ok(with(
                StatusCode::OK,
                "application/json",
                doc.to_string(),
                ctx,
            ))
        }
        "/oidc/login" => {
            get_only(req.method())?;
            draft.allow("sign-in started");
            let oidc = identity.oidc.as_ref().ok_or(ProxyError::UnknownEndpoint)?;
            let wanted = req.uri().query().map(url_decode_pairs).and_then(|p| {
                p.into_iter()
                    .find(|(k, _)| k == "return_to")
                    .map(|(_, v)| v)
            });
            let return_to = wanted
                .and_then(|r| {
                    safe_return_to(&r, &own_origin(ctx), &oidc.config.allowed_return_origins)
                })
                .unwrap_or_else(|| "/".into());
            Ok(match oidc.begin(ctx.host_str(), &return_to).await {
                Ok((location, cookie)) => {
                    let mut r = redirect(StatusCode::FOUND, &location, ctx);
                    r.headers_mut().append(header::SET_COOKIE, cookie);
                    r
                }
                Err(e) => {
                    identity.metrics.login(e.label());
                    html(
                        StatusCode::SERVICE_UNAVAILABLE,
                        pages::unavailable(&e.to_string(), ctx.request_id.to_str().unwrap_or("-")),
                        ctx,
                    )
                }
            })
        }
        "/oidc/callback" => {
            get_only(req.method())?;
            let oidc = identity.oidc.as_ref().ok_or(ProxyError::UnknownEndpoint)?;
            let codec = identity
                .sessions
                .as_ref()
                .ok_or(ProxyError::UnknownEndpoint)?;
            let query = req.uri().query().unwrap_or("");
            let id = ctx.request_id.to_str().unwrap_or("-").to_string();
            match oidc.complete(ctx.host_str(), query, req.headers()).await {
                Ok((session, return_to, login_cookie)) => {
                    identity.metrics.login("success");
                    draft.kind = Kind::Login;
                    draft.caller(&session.identity(), AuthMethod::Session);
                    draft.allow("signed in");
                    tracing::info!(sub = %session.sub, user = session.username.as_deref().unwrap_or("-"), "signed in");
                    let target = safe_return_to(
                        &return_to,
                        &own_origin(ctx),
                        &oidc.config.allowed_return_origins,
                    )
                    .unwrap_or_else(|| "/".into());
                    let mut r = redirect(StatusCode::FOUND, &target, ctx);
                    let h = r.headers_mut();
                    h.append(header::SET_COOKIE, cookies::delete(&login_cookie));
                    for c in codec.write(&session, ctx.host_str()) {
                        h.append(header::SET_COOKIE, c);
                    }
                    Ok(r)
                }
                Err(e) => {
                    identity.metrics.login(e.label());
                    tracing::warn!(reason = %e, "sign-in failed");
                    draft.kind = Kind::LoginFailure;
                    draft.deny(&format!("sign-in failed: {e}"));
                    let status = match e {
                        LoginError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::BAD_REQUEST,
                    };
                    Ok(html(status, pages::login_failed(&e.to_string(), &id), ctx))
                }
            }
        }
        "/logout" => logout(req, ctx, draft).await,
        _ => Err(ProxyError::UnknownEndpoint),
    }
}

fn own_origin(ctx: &RequestContext<'_>) -> String {
    format!("https://{}", ctx.host_str())
}

/// GET shows a confirmation form; POST with a valid CSRF token (and, when the browser sends
/// one, a same-origin `Origin`) clears the session and Gogs's cookies and ends the provider
/// session too when it supports RP-initiated logout.
async fn logout(
    req: Request<Incoming>,
    ctx: &RequestContext<'_>,
    draft: &mut Draft,
) -> Result<Response<ResponseBody>, ProxyError> {
    let identity = &ctx.rt.identity;
    let codec = identity
        .sessions
        .as_ref()
        .ok_or(ProxyError::UnknownEndpoint)?;
    let host = ctx.host_str();
    let session = codec.read(req.headers(), host);
    if let Some(s) = &session {
        draft.caller(&s.identity(), AuthMethod::Session);
    }
    match *req.method() {
        Method::GET | Method::HEAD => Ok(match &session {
            Some(s) => {
                let who = s.username.clone().unwrap_or_else(|| s.sub.clone());
                let mut r = html(
                    StatusCode::OK,
                    pages::logout_form(&who, &codec.csrf_token(s)),
                    ctx,
                );
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            None => html(StatusCode::OK, pages::signed_out(), ctx),
        }),
        Method::POST => {
            if let Some(origin) = req.headers().get(header::ORIGIN)
                && origin.as_bytes() != own_origin(ctx).as_bytes()
            {
                return Err(ProxyError::Forbidden(
                    "logout must be posted from the gateway's own page",
                ));
            }
            let (parts, body) = req.into_parts();
            let bytes: Bytes = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                Limited::new(body, 4096).collect(),
            )
            .await
            .map_err(|_| ProxyError::BodyTimeout)?
            .map_err(|_| ProxyError::BodyTooLarge(4096))?
            .to_bytes();
            let form = url_decode_pairs(std::str::from_utf8(&bytes).unwrap_or(""));
            let token = form
                .iter()
                .find(|(k, _)| k == "csrf")
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            let Some(session) = session else {
                return Ok(html(StatusCode::OK, pages::signed_out(), ctx));
            };
            if !codec.check_csrf(&session, token) {
                return Err(ProxyError::Forbidden("missing or invalid CSRF token"));
            }
            // Refused from now on by every replica, including copies of the cookie.
            let until = session
                .created
                .saturating_add(codec.config.absolute_lifetime.as_secs());
            if let Err(e) = identity.revocations.revoke(&session.sid, until).await {
                tracing::error!(sub = %session.sub, error = %e, "sign-out cannot be shared with the other replicas");
                return Err(ProxyError::SharedStoreUnavailable(
                    "the session store (so the sign-out cannot reach every replica)",
                ));
            }
            tracing::info!(sub = %session.sub, "signed out");
            draft.kind = Kind::Logout;
            draft.allow("signed out");
            let target = match &identity.oidc {
                Some(oidc) => oidc.end_session_url(&session, host).await,
                None => None,
            }
            .unwrap_or_else(|| "/.gatehouse/logout".to_string());
            let mut r = redirect(StatusCode::SEE_OTHER, &target, ctx);
            let h = r.headers_mut();
            for c in codec
                .clear()
                .into_iter()
                .chain(gogs::clear_cookies(&parts.headers))
            {
                h.append(header::SET_COOKIE, c);
            }
            h.insert("clear-site-data", HeaderValue::from_static("\"cookies\""));
            Ok(r)
        }
        _ => Err(ProxyError::EndpointMethod { allow: "GET, POST" }),
    }
}
