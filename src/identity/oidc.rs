//! Browser sign-in with OpenID Connect: authorization code flow with PKCE (S256), `state`
//! bound to a short-lived `__Host-` cookie and usable once, `nonce` checked, the RFC 9207
//! `iss` response parameter checked when the provider advertises it, the ID token validated
//! (signature, `iss`, `aud`, `azp`, `exp`, `iat`, `nonce`), groups from the ID token or
//! userinfo. Sessions are refreshed with the refresh token before the provider's tokens
//! expire; logout ends the provider session too when it supports RP-initiated logout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use http::header::{self, HeaderMap, HeaderValue};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl, RefreshToken, Scope,
    TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::IdentityMetrics;
use super::bearer::identity_from_claims;
use super::cookies::{self, Attributes};
use super::outbound::{Outbound, OutboundError, error_chain};
use super::session::{Session, SessionCodec, now, random_id};
use crate::config::{GroupsSource, OidcConfig, Secret};

/// Path the provider sends people back to.
pub const CALLBACK_PATH: &str = "/.gatehouse/oidc/callback";
/// How long a sign-in may take between leaving and coming back.
const LOGIN_TTL: u64 = 600;
/// Discovery is retried at most this often when it fails.
const DISCOVERY_RETRY: Duration = Duration::from_secs(10);
/// Provider metadata and keys are re-read this often.
const DISCOVERY_REFRESH: Duration = Duration::from_secs(3600);

/// Provider metadata fields openidconnect does not model.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_session_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_response_iss_parameter_supported: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_authorization_endpoint: Option<String>,
}

impl AdditionalProviderMetadata for ExtraMetadata {}

pub type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// What the pre-login cookie carries between leaving for the provider and coming back.
#[derive(Debug, Serialize, Deserialize)]
struct LoginState {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
    created: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the sign-in provider cannot be reached: {0}")]
    Unavailable(String),
    #[error("the provider reported an error: {0}")]
    Provider(String),
    #[error("this sign-in link is not valid (state missing, unknown, expired or already used)")]
    State,
    #[error("the response did not come from the configured provider (iss mismatch)")]
    Issuer,
    #[error("the provider's answer was refused: {0}")]
    Token(String),
}

impl LoginError {
    pub fn label(&self) -> &'static str {
        match self {
            LoginError::Unavailable(_) => "unavailable",
            LoginError::Provider(_) => "provider_error",
            LoginError::State => "state",
            LoginError::Issuer => "issuer",
            LoginError::Token(_) => "token",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The provider could not be reached; the session may still be usable until it expires.
    #[error("{0}")]
    Unavailable(String),
    /// The provider refused: the person must sign in again.
    #[error("{0}")]
    Refused(String),
}

/// The OIDC relying party.
pub struct Oidc {
    pub config: OidcConfig,
    secret: Secret,
    http: Outbound,
    sessions: Arc<SessionCodec>,
    metadata: ArcSwapOption<Metadata>,
    last_failure_ms: AtomicU64,
    discovery_lock: tokio::sync::Mutex<()>,
    /// States already redeemed (single use), with their expiry.
    used_states: DashMap<String, u64>,
    /// One refresh per session at a time; others wait for its result.
    refreshing: DashMap<String, RefreshSlot>,
    metrics: Arc<IdentityMetrics>,
}

/// The last refresh of one session: when, and the session it produced.
type RefreshSlot = Arc<tokio::sync::Mutex<Option<(u64, Session)>>>;

type HttpFuture =
    Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse, OutboundError>> + Send>>;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Oidc {
    pub fn new(
        config: OidcConfig,
        secret: Secret,
        http: Outbound,
        sessions: Arc<SessionCodec>,
        metrics: Arc<IdentityMetrics>,
    ) -> Oidc {
        Oidc {
            config,
            secret,
            http,
            sessions,
            metadata: ArcSwapOption::empty(),
            last_failure_ms: AtomicU64::new(0),
            discovery_lock: tokio::sync::Mutex::new(()),
            used_states: DashMap::new(),
            refreshing: DashMap::new(),
            metrics,
        }
    }

    fn http_fn(&self) -> impl Fn(openidconnect::HttpRequest) -> HttpFuture + Send + Sync + use<> {
        let http = self.http.clone();
        move |req| {
            let http = http.clone();
            Box::pin(async move { http.send(req).await })
        }
    }

    /// Discovers the provider at start and keeps its metadata and keys fresh.
    pub fn spawn_discovery(self: &Arc<Self>) {
        let weak: Weak<Oidc> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(oidc) = weak.upgrade() else { return };
                let delay = match oidc.discover().await {
                    Ok(_) => DISCOVERY_REFRESH,
                    Err(_) => DISCOVERY_RETRY,
                };
                drop(oidc);
                tokio::time::sleep(delay).await;
            }
        });
    }

    /// The provider metadata, discovering it first if needed. A discovery in progress is
    /// waited for; after a failure, new attempts are spaced by `DISCOVERY_RETRY`.
    pub async fn metadata(&self) -> Result<Arc<Metadata>, String> {
        if let Some(m) = self.metadata.load_full() {
            return Ok(m);
        }
        let _guard = self.discovery_lock.lock().await;
        if let Some(m) = self.metadata.load_full() {
            return Ok(m);
        }
        let failed_at = self.last_failure_ms.load(Ordering::Acquire);
        if failed_at != 0 && now_ms().saturating_sub(failed_at) < DISCOVERY_RETRY.as_millis() as u64
        {
            return Err("the provider could not be reached moments ago; retrying shortly".into());
        }
        self.discover_locked().await
    }

    async fn discover(&self) -> Result<Arc<Metadata>, String> {
        let _guard = self.discovery_lock.lock().await;
        self.discover_locked().await
    }

    async fn discover_locked(&self) -> Result<Arc<Metadata>, String> {
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| e.to_string())?;
        let http = self.http_fn();
        match Metadata::discover_async(issuer, &http).await {
            Ok(m) => {
                let m = Arc::new(m);
                self.metadata.store(Some(m.clone()));
                self.last_failure_ms.store(0, Ordering::Release);
                tracing::debug!(issuer = %self.config.issuer, "provider discovered");
                Ok(m)
            }
            Err(e) => {
                let message = error_chain(&e);
                self.last_failure_ms.store(now_ms(), Ordering::Release);
                tracing::warn!(issuer = %self.config.issuer, error = %message, "provider discovery failed");
                Err(message)
            }
        }
    }

    fn client(&self, metadata: &Metadata, origin: &str) -> Result<Client, String> {
        let redirect =
            RedirectUrl::new(format!("{origin}{CALLBACK_PATH}")).map_err(|e| e.to_string())?;
        Ok(CoreClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(self.secret.expose().to_string())),
        )
        .set_redirect_uri(redirect))
    }

    fn login_cookie_name(state: &str) -> String {
        let prefix: String = state
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        format!("{}{prefix}", cookies::LOGIN_PREFIX)
    }

    /// Where to send a browser to sign in, and the pre-login cookie to set.
    pub async fn begin(
        &self,
        host: &str,
        return_to: &str,
    ) -> Result<(String, HeaderValue), LoginError> {
        let metadata = self.metadata().await.map_err(LoginError::Unavailable)?;
        let origin = format!("https://{host}");
        let client = self.client(&metadata, &origin).map_err(LoginError::Token)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in self.config.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if let Some(prompt) = &self.config.prompt {
            request = request.add_extra_param("prompt", prompt.clone());
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let login = LoginState {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            return_to: return_to.to_string(),
            created: now(),
        };
        let sealed = self.sessions.seal(
            "gatehouse login",
            host,
            &serde_json::to_vec(&login).unwrap_or_default(),
        );
        let cookie = cookies::set(
            &Self::login_cookie_name(&login.state),
            &sealed,
            Attributes {
                max_age: Some(LOGIN_TTL),
                same_site_lax: true,
            },
        );
        Ok((url.to_string(), cookie))
    }

    /// Completes a sign-in from the provider's redirect. Returns the new session, where to go
    /// next, and the name of the pre-login cookie to delete.
    pub async fn complete(
        &self,
        host: &str,
        query: &str,
        headers: &HeaderMap,
    ) -> Result<(Session, String, String), LoginError> {
        let params: Vec<(String, String)> = url_decode_pairs(query);
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let state = param("state").ok_or(LoginError::State)?;
        let cookie_name = Self::login_cookie_name(state);
        let sealed = cookies::get(headers, &cookie_name).ok_or(LoginError::State)?;
        let login: LoginState = self
            .sessions
            .open("gatehouse login", host, sealed)
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .ok_or(LoginError::State)?;
        let now = now();
        if login.state != state || now > login.created + LOGIN_TTL {
            return Err(LoginError::State);
        }
        self.used_states.retain(|_, until| *until > now);
        if self
            .used_states
            .insert(login.state.clone(), login.created + LOGIN_TTL)
            .is_some()
        {
            return Err(LoginError::State);
        }
        if let Some(error) = param("error") {
            let description = param("error_description").unwrap_or("");
            return Err(LoginError::Provider(
                format!("{error} {description}").trim().to_string(),
            ));
        }
        let metadata = self.metadata().await.map_err(LoginError::Unavailable)?;
        let issuer = metadata.issuer().as_str().trim_end_matches('/');
        match param("iss") {
            Some(iss) if iss.trim_end_matches('/') != issuer => return Err(LoginError::Issuer),
            None if metadata
                .additional_metadata()
                .authorization_response_iss_parameter_supported
                == Some(true) =>
            {
                return Err(LoginError::Issuer);
            }
            _ => {}
        }
        let code =
            param("code").ok_or_else(|| LoginError::Token("no authorization code".into()))?;
        let origin = format!("https://{host}");
        let client = self.client(&metadata, &origin).map_err(LoginError::Token)?;
        let http = self.http_fn();
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| LoginError::Token(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.verifier.clone()))
            .request_async(&http)
            .await
            .map_err(|e| match e {
                openidconnect::RequestTokenError::Request(r) => {
                    LoginError::Unavailable(error_chain(&r))
                }
                other => LoginError::Token(error_chain(&other)),
            })?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| LoginError::Token("no ID token in the token response".into()))?;
        let nonce = Nonce::new(login.nonce.clone());
        let verifier = client
            .id_token_verifier()
            .set_issue_time_verifier_fn(iat_is_recent);
        id_token
            .claims(&verifier, &nonce)
            .map_err(|e| LoginError::Token(error_chain(&e)))?;
        let raw_id_token = id_token.to_string();
        let claims = payload(&raw_id_token)
            .ok_or_else(|| LoginError::Token("ID token payload is not JSON".into()))?;
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
        let userinfo = match self.config.groups_source {
            GroupsSource::IdToken => None,
            GroupsSource::Userinfo => Some(
                self.userinfo(&metadata, tokens.access_token().secret())
                    .await
                    .map_err(LoginError::Token)?,
            ),
        };
        let session = self
            .session_from(
                &claims,
                userinfo.as_ref(),
                now,
                exp,
                tokens.refresh_token().map(|t| t.secret().clone()),
                Some(raw_id_token),
            )
            .map_err(LoginError::Token)?;
        Ok((session, login.return_to, cookie_name))
    }

    fn session_from(
        &self,
        claims: &Map<String, Value>,
        userinfo: Option<&Map<String, Value>>,
        now: u64,
        expires: u64,
        refresh_token: Option<String>,
        id_token: Option<String>,
    ) -> Result<Session, String> {
        let mut merged = claims.clone();
        if let Some(info) = userinfo {
            if info.get("sub") != claims.get("sub") {
                return Err("userinfo names a different subject than the ID token".into());
            }
            for (k, v) in info {
                merged.insert(k.clone(), v.clone());
            }
        }
        let identity = identity_from_claims(
            &merged,
            &self.config.issuer,
            &self.config.username_claim,
            &self.config.groups_claim,
            expires,
        )
        .map_err(|e| e.to_string())?;
        Ok(Session {
            sid: random_id(),
            iss: identity.issuer,
            sub: identity.subject,
            username: identity.username,
            email: identity.email,
            email_verified: identity.email_verified,
            groups: identity.groups,
            created: now,
            seen: now,
            expires,
            refresh_token,
            id_token,
        })
    }

    async fn userinfo(
        &self,
        metadata: &Metadata,
        access_token: &str,
    ) -> Result<Map<String, Value>, String> {
        let url = metadata
            .userinfo_endpoint()
            .ok_or("the provider has no userinfo endpoint")?
            .url()
            .to_string();
        let req = http::Request::get(&url)
            .header(header::AUTHORIZATION, format!("Bearer {access_token}"))
            .header(header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        let resp = self.http.send(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("userinfo answered {}", resp.status()));
        }
        serde_json::from_slice(resp.body()).map_err(|_| {
            "userinfo is not a JSON object (signed userinfo is not supported)".to_string()
        })
    }

    /// Refreshes a session's provider tokens. Concurrent requests of one session share one
    /// refresh (providers that rotate refresh tokens would otherwise revoke the session).
    pub async fn refresh(&self, session: &Session) -> Result<Session, RefreshError> {
        let slot = self
            .refreshing
            .entry(session.sid.clone())
            .or_default()
            .clone();
        let mut guard = slot.lock().await;
        let now = now();
        if let Some((at, fresh)) = guard.as_ref()
            && now <= at + 30
        {
            return Ok(fresh.clone());
        }
        let result = self.refresh_once(session, now).await;
        match &result {
            Ok(fresh) => {
                self.metrics.refresh("success");
                *guard = Some((now, fresh.clone()));
            }
            Err(RefreshError::Unavailable(_)) => self.metrics.refresh("unavailable"),
            Err(RefreshError::Refused(_)) => self.metrics.refresh("refused"),
        }
        drop(guard);
        self.refreshing.retain(|_, slot| {
            slot.try_lock()
                .map(|g| g.as_ref().is_some_and(|(at, _)| now <= at + 60))
                .unwrap_or(true)
        });
        result
    }

    async fn refresh_once(&self, session: &Session, now: u64) -> Result<Session, RefreshError> {
        let Some(refresh_token) = &session.refresh_token else {
            return Err(RefreshError::Refused("no refresh token".into()));
        };
        let metadata = self.metadata().await.map_err(RefreshError::Unavailable)?;
        // Any registered origin works for a refresh; the redirect URI is not sent.
        let client = self
            .client(&metadata, "https://gatehouse.invalid")
            .map_err(RefreshError::Refused)?;
        let http = self.http_fn();
        let rt = RefreshToken::new(refresh_token.clone());
        let tokens = client
            .exchange_refresh_token(&rt)
            .map_err(|e| RefreshError::Refused(e.to_string()))?
            .request_async(&http)
            .await
            .map_err(|e| match e {
                openidconnect::RequestTokenError::Request(r) => {
                    RefreshError::Unavailable(error_chain(&r))
                }
                other => RefreshError::Refused(error_chain(&other)),
            })?;
        let access_expires = tokens.expires_in().map(|d| now + d.as_secs());
        let (claims, id_token, expires) = match tokens.id_token() {
            Some(t) => {
                let verifier = client
                    .id_token_verifier()
                    .set_issue_time_verifier_fn(iat_is_recent);
                t.claims(&verifier, |_: Option<&Nonce>| Ok(()))
                    .map_err(|e| RefreshError::Refused(error_chain(&e)))?;
                let raw = t.to_string();
                let claims = payload(&raw)
                    .ok_or_else(|| RefreshError::Refused("ID token payload is not JSON".into()))?;
                if claims.get("sub").and_then(Value::as_str) != Some(session.sub.as_str()) {
                    return Err(RefreshError::Refused(
                        "refreshed ID token names another subject".into(),
                    ));
                }
                let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
                (Some(claims), Some(raw), exp)
            }
            None => (
                None,
                session.id_token.clone(),
                access_expires.unwrap_or(now + 300),
            ),
        };
        let userinfo = match self.config.groups_source {
            GroupsSource::Userinfo => Some(
                self.userinfo(&metadata, tokens.access_token().secret())
                    .await
                    .map_err(RefreshError::Refused)?,
            ),
            GroupsSource::IdToken => None,
        };
        let mut fresh = match (claims, &userinfo) {
            (Some(c), u) => self
                .session_from(&c, u.as_ref(), now, expires, None, None)
                .map_err(RefreshError::Refused)?,
            (None, Some(u)) => {
                let mut base = Map::new();
                base.insert("sub".into(), Value::String(session.sub.clone()));
                self.session_from(&base, Some(u), now, expires, None, None)
                    .map_err(RefreshError::Refused)?
            }
            (None, None) => {
                let mut s = session.clone();
                s.expires = expires;
                s
            }
        };
        fresh.sid = session.sid.clone();
        fresh.created = session.created;
        fresh.seen = session.seen;
        fresh.refresh_token = tokens
            .refresh_token()
            .map(|t| t.secret().clone())
            .or_else(|| session.refresh_token.clone());
        fresh.id_token = id_token;
        Ok(fresh)
    }

    /// The provider's logout URL (RP-initiated logout), when it has one.
    pub async fn end_session_url(
        &self,
        session: &super::session::Session,
        host: &str,
    ) -> Option<String> {
        let metadata = self.metadata().await.ok()?;
        let endpoint = metadata
            .additional_metadata()
            .end_session_endpoint
            .clone()?;
        let mut url = url_with_query(&endpoint);
        let post_logout = format!("https://{host}/");
        let mut params = vec![
            ("post_logout_redirect_uri", post_logout.as_str()),
            ("client_id", self.config.client_id.as_str()),
        ];
        if let Some(hint) = &session.id_token {
            params.push(("id_token_hint", hint.as_str()));
        }
        for (k, v) in params {
            url.push_str(k);
            url.push('=');
            url.push_str(&percent_encode(v));
            url.push('&');
        }
        url.pop();
        Some(url)
    }

    /// The provider's device authorization endpoint, for `gatehouse login`.
    pub async fn device_endpoint(&self) -> Option<String> {
        self.metadata()
            .await
            .ok()?
            .additional_metadata()
            .device_authorization_endpoint
            .clone()
    }
}

/// `iat` must not be in the future (beyond a minute of skew) nor older than the login window.
fn iat_is_recent(iat: chrono::DateTime<chrono::Utc>) -> Result<(), String> {
    let iat = iat.timestamp();
    let now = now() as i64;
    if iat > now + 60 {
        return Err("ID token issued in the future".into());
    }
    if iat < now - LOGIN_TTL as i64 {
        return Err("ID token issued too long ago".into());
    }
    Ok(())
}

/// The JSON payload of a (verified) JWT.
fn payload(jwt: &str) -> Option<Map<String, Value>> {
    let middle = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(middle.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn url_with_query(endpoint: &str) -> String {
    let mut url = endpoint.to_string();
    url.push(if url.contains('?') { '&' } else { '?' });
    url
}

/// Percent-encodes everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `application/x-www-form-urlencoded` pairs (query strings and form bodies).
pub fn url_decode_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_pairs_decode() {
        let pairs = url_decode_pairs("code=a%2Fb&state=x+y&iss=https%3A%2F%2Fidp&empty=&flag");
        assert_eq!(pairs[0], ("code".into(), "a/b".into()));
        assert_eq!(pairs[1], ("state".into(), "x y".into()));
        assert_eq!(pairs[2], ("iss".into(), "https://idp".into()));
        assert_eq!(pairs[3], ("empty".into(), "".into()));
        assert_eq!(pairs[4], ("flag".into(), "".into()));
        assert_eq!(url_decode_pairs("a=%zz%")[0].1, "%zz%");
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved() {
        assert_eq!(
            percent_encode("https://git.example.com/ a"),
            "https%3A%2F%2Fgit.example.com%2F%20a"
        );
    }

    #[test]
    fn issue_times_must_be_recent() {
        let now = chrono::Utc::now();
        assert!(iat_is_recent(now).is_ok());
        assert!(iat_is_recent(now + chrono::Duration::seconds(300)).is_err());
        assert!(iat_is_recent(now - chrono::Duration::seconds(3600)).is_err());
    }
}
