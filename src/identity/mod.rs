//! Who is calling: people through OIDC sign-in and an encrypted session cookie, machines and
//! command-line users through JWT bearer tokens (or a JWT as the password of Basic auth, so
//! git's credential helpers work).
//!
//! [`Authenticator::authenticate`] runs after routing and before anything is forwarded. It
//! either names the caller or answers for the gateway: a redirect to sign in, a 401 with the
//! right challenge, or a 503 when the provider is needed and unreachable.

pub mod assertion;
pub mod bearer;
pub mod challenge;
pub mod cookies;
pub mod credential;
pub mod jwks;
pub mod keyring;
pub mod metrics;
pub mod oidc;
pub mod outbound;
pub mod pages;
pub mod redirect;
pub mod revocation;
pub mod session;

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use serde::{Deserialize, Serialize};

pub use metrics::IdentityMetrics;

use crate::config::{IdentityConfig, RouteAuth, SecretError};
use crate::proxy::client::ClientBuildError;
use assertion::Assertion;
use bearer::{BearerVerifier, Rejection};
use challenge::Challenge;
use credential::Presented;
use jwks::JwtIssuer;
use keyring::{KeyRing, KeyRingError};
use oidc::{Oidc, RefreshError};
use outbound::Outbound;
use session::{SessionCodec, Standing};

/// Who the gateway authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub subject: String,
    pub issuer: String,
    pub username: Option<String>,
    pub email: Option<String>,
    pub email_verified: bool,
    pub groups: Vec<String>,
    /// OAuth client that obtained the token (machines and the CLI).
    pub client_id: Option<String>,
    /// When the credential stops being valid (Unix seconds).
    pub expires_at: u64,
}

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    Session = 0,
    Bearer = 1,
    Basic = 2,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Session => "session",
            AuthMethod::Bearer => "bearer",
            AuthMethod::Basic => "basic",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Arc<Identity>,
    pub method: AuthMethod,
    /// Session cookies to set on the response (touched or refreshed session).
    pub set_cookies: Vec<HeaderValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityBuildError {
    #[error("identity.session.keys: {0}")]
    SessionKeysSecret(#[source] SecretError),
    #[error("identity.session.keys ({source_ref}): {error}")]
    SessionKeys {
        source_ref: String,
        error: KeyRingError,
    },
    #[error("identity.oidc.client_secret: {0}")]
    ClientSecret(#[source] SecretError),
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("identity.assertion: {0}")]
    Assertion(String),
}

/// Everything needed to authenticate requests, built from `[identity]`.
pub struct Authenticator {
    pub sessions: Option<Arc<SessionCodec>>,
    pub oidc: Option<Arc<Oidc>>,
    pub bearer: Option<Arc<BearerVerifier>>,
    pub assertion: Option<Arc<Assertion>>,
    pub metrics: Arc<IdentityMetrics>,
    /// Background JWKS refresh period (`identity.jwks_refresh`).
    pub jwks_refresh: std::time::Duration,
    /// Signed-out sessions (outlive reloads: shared with the gateway).
    pub revocations: Arc<revocation::Revocations>,
}

/// What authentication decided.
pub enum Outcome {
    Caller(Caller),
    /// The gateway answers instead of the upstream; the reason is for logs and audit.
    Challenge(Challenge),
}

impl Authenticator {
    /// Loads keys and secrets and prepares provider clients. Makes no network calls.
    pub fn build(
        config: &IdentityConfig,
        metrics: Arc<IdentityMetrics>,
        revocations: Arc<revocation::Revocations>,
    ) -> Result<Authenticator, IdentityBuildError> {
        let sessions = match &config.session {
            None => None,
            Some(s) => {
                let text = s
                    .keys
                    .load()
                    .map_err(IdentityBuildError::SessionKeysSecret)?;
                let ring = KeyRing::parse(text.expose()).map_err(|error| {
                    IdentityBuildError::SessionKeys {
                        source_ref: s.keys.to_string(),
                        error,
                    }
                })?;
                Some(Arc::new(SessionCodec::new(Arc::new(ring), s.clone())))
            }
        };
        let oidc = match (&config.oidc, &sessions) {
            (Some(o), Some(codec)) => {
                let secret = o
                    .client_secret
                    .load()
                    .map_err(IdentityBuildError::ClientSecret)?;
                let http = Outbound::new(o.ca_file.as_deref(), "identity.oidc")?;
                Some(Arc::new(Oidc::new(
                    o.clone(),
                    secret,
                    http,
                    codec.clone(),
                    metrics.clone(),
                )))
            }
            _ => None,
        };
        let bearer = if config.jwt.is_empty() {
            None
        } else {
            let mut issuers = Vec::new();
            for (i, j) in config.jwt.iter().enumerate() {
                let http = Outbound::new(j.ca_file.as_deref(), &format!("identity.jwt[{i}]"))?;
                issuers.push(JwtIssuer::new(j.clone(), http, metrics.clone()));
            }
            Some(Arc::new(BearerVerifier::new(issuers, metrics.clone())))
        };
        let assertion = match &config.assertion {
            None => None,
            Some(a) => Some(Arc::new(
                Assertion::load(a).map_err(IdentityBuildError::Assertion)?,
            )),
        };
        Ok(Authenticator {
            sessions,
            oidc,
            bearer,
            assertion,
            metrics,
            jwks_refresh: config.jwks_refresh,
            revocations,
        })
    }

    /// Starts background work (key refresh, discovery). Needs a Tokio runtime.
    pub fn start(&self) {
        if let Some(b) = &self.bearer {
            for issuer in b.issuers() {
                issuer.spawn_refresher(self.jwks_refresh);
            }
        }
        if let Some(o) = &self.oidc {
            o.spawn_discovery();
        }
    }

    /// Decides who is calling `route`. Removes the credentials it consumed (the
    /// `Authorization` header) and the gateway's own cookies from the request.
    pub async fn authenticate(&self, parts: &mut Parts, auth: RouteAuth, host: &str) -> Outcome {
        let authorization = parts.headers.remove(header::AUTHORIZATION);
        if let Some(value) = authorization {
            return self.credential(&value, parts, auth).await;
        }
        if auth.session
            && let Some(outcome) = self.session(parts, auth, host).await
        {
            return outcome;
        }
        Outcome::Challenge(challenge::unauthenticated(parts, auth, "no credentials"))
    }

    async fn credential(&self, value: &HeaderValue, parts: &Parts, auth: RouteAuth) -> Outcome {
        let (method, token) = match credential::parse(value.as_bytes()) {
            Presented::Bearer(token) if auth.bearer => (AuthMethod::Bearer, token),
            Presented::Basic(password) if auth.basic => (AuthMethod::Basic, password),
            Presented::MalformedBasic if auth.basic => {
                return self.reject(parts, auth, AuthMethod::Basic, Rejection::Malformed);
            }
            _ => {
                self.metrics.rejected("scheme");
                return Outcome::Challenge(challenge::unauthenticated(
                    parts,
                    auth,
                    "authorization scheme not accepted on this route",
                ));
            }
        };
        let Some(verifier) = &self.bearer else {
            return self.reject(parts, auth, method, Rejection::UntrustedIssuer);
        };
        match verifier.verify(&token).await {
            Ok(identity) => {
                self.metrics.authenticated(method);
                Outcome::Caller(Caller {
                    identity,
                    method,
                    set_cookies: Vec::new(),
                })
            }
            Err(r) => self.reject(parts, auth, method, r),
        }
    }

    fn reject(&self, parts: &Parts, auth: RouteAuth, method: AuthMethod, r: Rejection) -> Outcome {
        self.metrics.rejected(r.label());
        tracing::info!(reason = %r, method = method.as_str(), "credential refused");
        Outcome::Challenge(challenge::invalid_credential(parts, auth, method, &r))
    }

    /// The session, refreshed if due; `None` when there is none worth using.
    async fn session(&self, parts: &Parts, auth: RouteAuth, host: &str) -> Option<Outcome> {
        let codec = self.sessions.as_ref()?;
        let session = codec.read(&parts.headers, host)?;
        if self.revocations.is_revoked(&session.sid) {
            tracing::info!(sub = %session.sub, "signed-out session presented; signing in again");
            let mut c = challenge::unauthenticated(parts, auth, "session signed out");
            c.clear_session(codec);
            return Some(Outcome::Challenge(c));
        }
        let now = session::now();
        match session.standing(now, &codec.config) {
            Standing::Valid => {
                let mut set_cookies = Vec::new();
                if codec.should_touch(&session, now) {
                    let mut touched = session.clone();
                    touched.seen = now;
                    set_cookies = codec.write(&touched, host);
                }
                self.metrics.authenticated(AuthMethod::Session);
                Some(Outcome::Caller(Caller {
                    identity: Arc::new(session.identity()),
                    method: AuthMethod::Session,
                    set_cookies,
                }))
            }
            Standing::Refresh => {
                let oidc = self.oidc.as_ref()?;
                // Boxed: a refresh is rare and its future large.
                match Box::pin(oidc.refresh(&session)).await {
                    Ok(mut fresh) => {
                        fresh.seen = now;
                        let set_cookies = codec.write(&fresh, host);
                        self.metrics.authenticated(AuthMethod::Session);
                        Some(Outcome::Caller(Caller {
                            identity: Arc::new(fresh.identity()),
                            method: AuthMethod::Session,
                            set_cookies,
                        }))
                    }
                    // The provider is down but the tokens have not expired yet: keep serving.
                    Err(RefreshError::Unavailable(_)) if now < session.expires => {
                        self.metrics.authenticated(AuthMethod::Session);
                        Some(Outcome::Caller(Caller {
                            identity: Arc::new(session.identity()),
                            method: AuthMethod::Session,
                            set_cookies: Vec::new(),
                        }))
                    }
                    Err(RefreshError::Unavailable(e)) => Some(Outcome::Challenge(
                        challenge::provider_unavailable(parts, &e),
                    )),
                    Err(RefreshError::Refused(reason)) => {
                        tracing::info!(sub = %session.sub, %reason, "session refresh refused; signing in again");
                        let mut c =
                            challenge::unauthenticated(parts, auth, "session refresh refused");
                        c.clear_session(codec);
                        Some(Outcome::Challenge(c))
                    }
                }
            }
            Standing::Expired(why) => {
                let mut c = challenge::unauthenticated(parts, auth, why);
                c.clear_session(codec);
                Some(Outcome::Challenge(c))
            }
        }
    }
}
