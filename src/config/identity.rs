//! The `[identity]` section and the per-route authentication and brokering settings.

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::Validator;
use super::file::{
    FileAuthMethod, FileGogs, FileGroupsSource, FileIdentity, FileJwtIssuer, FileOidc, FileOtlp,
    FileRoute, FileRouteKind,
};
use super::secret::SecretRef;

#[derive(Debug, Clone, Default)]
pub struct IdentityConfig {
    /// Sign-in for people (authorization code + PKCE).
    pub oidc: Option<OidcConfig>,
    pub session: Option<SessionConfig>,
    /// Issuers whose JWTs are accepted as bearer tokens (machines, the CLI, git).
    pub jwt: Vec<JwtIssuerConfig>,
    /// The gateway's own signed identity assertion toward upstreams.
    pub assertion: Option<AssertionConfig>,
    /// How often the JWT issuers' keys are fetched again in the background (and retried,
    /// at most every minute, after a failed fetch).
    pub jwks_refresh: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupsSource {
    IdToken,
    Userinfo,
}

#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretRef,
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub groups_claim: String,
    pub groups_source: GroupsSource,
    pub ca_file: Option<PathBuf>,
    /// Public client `gatehouse login` uses for the device grant.
    pub cli_client_id: Option<String>,
    /// Origins (scheme://host[:port]) a login may return to besides the gateway's own.
    pub allowed_return_origins: Vec<String>,
    /// `prompt` sent with every sign-in (some providers grant `offline_access` only with
    /// `consent`).
    pub prompt: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Newest key first; every key decrypts, the first encrypts.
    pub keys: SecretRef,
    pub absolute_lifetime: Duration,
    pub idle_lifetime: Duration,
    /// Refresh the provider's tokens this long before they expire.
    pub refresh_before: Duration,
}

#[derive(Debug, Clone)]
pub struct JwtIssuerConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Default: taken from the issuer's discovery document.
    pub jwks_uri: Option<String>,
    pub leeway: Duration,
    pub username_claim: String,
    pub groups_claim: String,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AssertionConfig {
    /// Ed25519 private key (PKCS#8 PEM).
    pub key_file: PathBuf,
    pub lifetime: Duration,
}

/// How callers of a route authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteAuth {
    /// Encrypted session cookie from an OIDC login (browsers).
    pub session: bool,
    /// `Authorization: Bearer <JWT>`.
    pub bearer: bool,
    /// `Authorization: Basic` with a JWT as password (git's credential machinery).
    pub basic: bool,
    /// No authentication at all (explicit opt-in).
    pub public: bool,
}

impl RouteAuth {
    pub const PUBLIC: RouteAuth = RouteAuth {
        session: false,
        bearer: false,
        basic: false,
        public: true,
    };
}

/// Identity and credentials toward a Gogs upstream.
#[derive(Debug, Clone)]
pub struct GogsBroker {
    /// Header Gogs reads the username from (`[auth] REVERSE_PROXY_AUTHENTICATION_HEADER`).
    pub user_header: HeaderName,
    /// Credentials presented for git and API requests; the first whose filters match wins.
    pub credentials: Vec<BrokerCredential>,
}

#[derive(Debug, Clone)]
pub struct BrokerCredential {
    pub username: String,
    pub token: SecretRef,
    /// Only for callers in one of these groups (empty: anyone).
    pub groups: Vec<String>,
    /// Only for these OAuth client ids (empty: anyone).
    pub clients: Vec<String>,
}

/// Credentials toward an OTLP (Lightstep) upstream.
#[derive(Debug, Clone, Default)]
pub struct OtlpBroker {
    /// Sent as `lightstep-access-token`; callers never hold it.
    pub access_token: Option<SecretRef>,
    /// Upstream paths per signal (`None`: the path the client used).
    pub traces_path: Option<String>,
    pub metrics_path: Option<String>,
    pub logs_path: Option<String>,
}

pub mod defaults {
    use std::time::Duration;
    pub const SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
    pub const USERNAME_CLAIM: &str = "preferred_username";
    pub const GROUPS_CLAIM: &str = "groups";
    pub const ABSOLUTE_LIFETIME: Duration = Duration::from_secs(12 * 3600);
    pub const IDLE_LIFETIME: Duration = Duration::from_secs(2 * 3600);
    pub const REFRESH_BEFORE: Duration = Duration::from_secs(60);
    pub const LEEWAY: Duration = Duration::from_secs(30);
    pub const MAX_LEEWAY: Duration = Duration::from_secs(60);
    pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);
    pub const JWKS_REFRESH: Duration = Duration::from_secs(600);
    pub const MIN_JWKS_REFRESH: Duration = Duration::from_secs(1);
    pub const USER_HEADER: &str = "x-webauth-user";
}

const ALGORITHMS: &str = "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

impl Validator<'_> {
    pub(super) fn secret(
        &mut self,
        env: &Option<Spanned<String>>,
        file: &Option<Spanned<String>>,
        key: &str,
        at: Option<&Spanned<String>>,
    ) -> Option<SecretRef> {
        match (env, file) {
            (Some(e), None) => {
                let name = e.get_ref();
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    self.report(
                        e,
                        &format!("{key}_env"),
                        format!("{name:?} is not an environment variable name"),
                    );
                }
                Some(SecretRef::Env(name.clone()))
            }
            (None, Some(f)) => Some(SecretRef::File(self.path(f.get_ref()))),
            (Some(e), Some(_)) => {
                self.report(
                    e,
                    key,
                    format!("set either {key}_env or {key}_file, not both"),
                );
                None
            }
            (None, None) => {
                let message =
                    format!("{key}_env or {key}_file is required (secrets never go in this file)");
                match at {
                    Some(at) => self.report(at, key, message),
                    None => self.report_unplaced(key, message),
                }
                None
            }
        }
    }

    fn https_url(&mut self, value: &Spanned<String>, key: &str) -> String {
        let text = value.get_ref().trim_end_matches('/').to_string();
        match text.parse::<http::Uri>() {
            Ok(u)
                if u.scheme_str() == Some("https") && u.host().is_some() && u.query().is_none() => {
            }
            _ => self.report(
                value,
                key,
                format!(
                    "{:?} must be an https:// URL without query",
                    value.get_ref()
                ),
            ),
        }
        text
    }

    fn claim_name(&mut self, value: &Option<Spanned<String>>, key: &str, default: &str) -> String {
        match value {
            None => default.to_string(),
            Some(v) if v.get_ref().is_empty() => {
                self.report(v, key, "must not be empty");
                default.to_string()
            }
            Some(v) => v.get_ref().clone(),
        }
    }

    pub(super) fn identity(&mut self, file: Option<&FileIdentity>) -> IdentityConfig {
        let Some(file) = file else {
            return IdentityConfig {
                jwks_refresh: defaults::JWKS_REFRESH,
                ..IdentityConfig::default()
            };
        };
        let jwks_refresh = self.duration(
            &file.jwks_refresh,
            "identity.jwks_refresh",
            defaults::JWKS_REFRESH,
        );
        if jwks_refresh < defaults::MIN_JWKS_REFRESH
            && let Some(j) = &file.jwks_refresh
        {
            self.report(j, "identity.jwks_refresh", "must be at least 1s");
        }
        IdentityConfig {
            jwks_refresh: jwks_refresh.max(defaults::MIN_JWKS_REFRESH),
            oidc: file.oidc.as_ref().map(|o| self.oidc(o)),
            session: file.session.as_ref().map(|s| SessionConfig {
                keys: self
                    .secret(&s.keys_env, &s.keys_file, "identity.session.keys", None)
                    .unwrap_or(SecretRef::Env(String::new())),
                absolute_lifetime: self.duration(
                    &s.absolute_lifetime,
                    "identity.session.absolute_lifetime",
                    defaults::ABSOLUTE_LIFETIME,
                ),
                idle_lifetime: self.duration(
                    &s.idle_lifetime,
                    "identity.session.idle_lifetime",
                    defaults::IDLE_LIFETIME,
                ),
                refresh_before: self.duration(
                    &s.refresh_before,
                    "identity.session.refresh_before",
                    defaults::REFRESH_BEFORE,
                ),
            }),
            jwt: file
                .jwt
                .iter()
                .enumerate()
                .map(|(i, j)| self.jwt_issuer(i, j))
                .collect(),
            assertion: file.assertion.as_ref().map(|a| AssertionConfig {
                key_file: self.path(a.key_file.get_ref()),
                lifetime: self.duration(
                    &a.lifetime,
                    "identity.assertion.lifetime",
                    defaults::ASSERTION_LIFETIME,
                ),
            }),
        }
    }

    fn oidc(&mut self, o: &FileOidc) -> OidcConfig {
        let issuer = self.https_url(&o.issuer, "identity.oidc.issuer");
        let scopes: Vec<String> = match &o.scopes {
            None => defaults::SCOPES.iter().map(|s| s.to_string()).collect(),
            Some(list) => {
                let scopes: Vec<String> =
                    list.get_ref().iter().map(|s| s.get_ref().clone()).collect();
                if !scopes.iter().any(|s| s == "openid") {
                    self.report(list, "identity.oidc.scopes", "must include \"openid\"");
                }
                scopes
            }
        };
        let mut origins = Vec::new();
        for (i, origin) in o.allowed_return_origins.iter().enumerate() {
            let text = origin.get_ref();
            match text.parse::<http::Uri>() {
                Ok(u)
                    if u.scheme_str() == Some("https")
                        && u.authority().is_some()
                        && matches!(u.path(), "" | "/") =>
                {
                    origins.push(format!(
                        "https://{}",
                        u.authority()
                            .map(|a| a.as_str().to_ascii_lowercase())
                            .unwrap_or_default()
                    ));
                }
                _ => self.report(
                    origin,
                    &format!("identity.oidc.allowed_return_origins[{i}]"),
                    format!("{text:?} is not an origin: expected https://host[:port]"),
                ),
            }
        }
        OidcConfig {
            issuer,
            client_id: o.client_id.get_ref().clone(),
            client_secret: self
                .secret(
                    &o.client_secret_env,
                    &o.client_secret_file,
                    "identity.oidc.client_secret",
                    Some(&o.client_id),
                )
                .unwrap_or(SecretRef::Env(String::new())),
            scopes,
            username_claim: self.claim_name(
                &o.username_claim,
                "identity.oidc.username_claim",
                defaults::USERNAME_CLAIM,
            ),
            groups_claim: self.claim_name(
                &o.groups_claim,
                "identity.oidc.groups_claim",
                defaults::GROUPS_CLAIM,
            ),
            groups_source: match o.groups_source.as_ref().map(|g| *g.get_ref()) {
                None | Some(FileGroupsSource::IdToken) => GroupsSource::IdToken,
                Some(FileGroupsSource::Userinfo) => GroupsSource::Userinfo,
            },
            ca_file: o.ca_file.as_ref().map(|f| self.path(f.get_ref())),
            cli_client_id: o.cli_client_id.as_ref().map(|c| c.get_ref().clone()),
            allowed_return_origins: origins,
            prompt: o.prompt.as_ref().map(|p| {
                let text = p.get_ref();
                if !text.split(' ').all(|v| matches!(v, "none" | "login" | "consent" | "select_account")) {
                    self.report(p, "identity.oidc.prompt", format!("{text:?}: expected space-separated none, login, consent or select_account"));
                }
                text.clone()
            }),
        }
    }

    fn jwt_issuer(&mut self, i: usize, j: &FileJwtIssuer) -> JwtIssuerConfig {
        let key = |f: &str| format!("identity.jwt[{i}].{f}");
        let issuer = self.https_url(&j.issuer, &key("issuer"));
        if j.audiences.get_ref().is_empty() {
            self.report(
                &j.audiences,
                &key("audiences"),
                "must list at least one audience",
            );
        }
        let mut algorithms = Vec::new();
        match &j.algorithms {
            None => algorithms.extend([
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::Algorithm::PS256,
                jsonwebtoken::Algorithm::EdDSA,
            ]),
            Some(list) => {
                for a in list.get_ref() {
                    match a.get_ref().parse::<jsonwebtoken::Algorithm>() {
                        Ok(jsonwebtoken::Algorithm::HS256 | jsonwebtoken::Algorithm::HS384 | jsonwebtoken::Algorithm::HS512) => self.report(
                            a,
                            &key("algorithms"),
                            format!("{} is a shared-secret algorithm and is never accepted for bearer tokens (allowed: {ALGORITHMS})", a.get_ref()),
                        ),
                        Ok(alg) => algorithms.push(alg),
                        Err(_) => self.report(a, &key("algorithms"), format!("{:?} is not a supported algorithm (allowed: {ALGORITHMS})", a.get_ref())),
                    }
                }
                if list.get_ref().is_empty() {
                    self.report(
                        list,
                        &key("algorithms"),
                        format!("must list at least one of {ALGORITHMS}"),
                    );
                }
            }
        }
        let leeway = self.duration(&j.leeway, &key("leeway"), defaults::LEEWAY);
        if leeway > defaults::MAX_LEEWAY
            && let Some(l) = &j.leeway
        {
            self.report(l, &key("leeway"), "must be at most 60s");
        }
        JwtIssuerConfig {
            issuer,
            audiences: j
                .audiences
                .get_ref()
                .iter()
                .map(|a| a.get_ref().clone())
                .collect(),
            algorithms,
            jwks_uri: j
                .jwks_uri
                .as_ref()
                .map(|u| self.https_url(u, &key("jwks_uri"))),
            leeway: leeway.min(defaults::MAX_LEEWAY),
            username_claim: self.claim_name(
                &j.username_claim,
                &key("username_claim"),
                defaults::USERNAME_CLAIM,
            ),
            groups_claim: self.claim_name(
                &j.groups_claim,
                &key("groups_claim"),
                defaults::GROUPS_CLAIM,
            ),
            ca_file: j.ca_file.as_ref().map(|f| self.path(f.get_ref())),
        }
    }

    /// Authentication for one route, checked against what `[identity]` provides.
    pub(super) fn route_auth(
        &mut self,
        i: usize,
        r: &FileRoute,
        identity: &IdentityConfig,
    ) -> RouteAuth {
        let key = format!("routes[{i}].auth");
        let public = r.public.as_ref().is_some_and(|p| *p.get_ref());
        if public {
            if let Some(a) = &r.auth {
                self.report(
                    a,
                    &key,
                    "a public route takes no auth methods; remove one of `public` and `auth`",
                );
            }
            return RouteAuth::PUBLIC;
        }
        let methods: Vec<FileAuthMethod> = match &r.auth {
            Some(list) => list.get_ref().clone(),
            None => match r.kind {
                FileRouteKind::Gogs => vec![
                    FileAuthMethod::Session,
                    FileAuthMethod::Bearer,
                    FileAuthMethod::Basic,
                ],
                FileRouteKind::Otlp => vec![FileAuthMethod::Bearer],
                FileRouteKind::Plain => vec![FileAuthMethod::Session, FileAuthMethod::Bearer],
            },
        };
        let auth = RouteAuth {
            session: methods.contains(&FileAuthMethod::Session),
            bearer: methods.contains(&FileAuthMethod::Bearer),
            basic: methods.contains(&FileAuthMethod::Basic),
            public: false,
        };
        let (place, place_is_auth) = match &r.auth {
            Some(a) => (a.span(), true),
            None => (r.name.span(), false),
        };
        let anchor = Spanned::new(place, ());
        let hint = if place_is_auth {
            ""
        } else {
            " (the default for this route kind)"
        };
        if !auth.session && !auth.bearer && !auth.basic {
            self.report(
                &anchor,
                &key,
                "lists no method: use session, bearer, basic, or `public = true`",
            );
        }
        if auth.session && (identity.oidc.is_none() || identity.session.is_none()) {
            self.report(
                &anchor,
                &key,
                format!("session{hint} needs [identity.oidc] and [identity.session]; or set `public = true` to serve without authentication"),
            );
        }
        if (auth.bearer || auth.basic) && identity.jwt.is_empty() {
            self.report(
                &anchor,
                &key,
                format!("bearer and basic{hint} need at least one [[identity.jwt]] issuer; or set `public = true` to serve without authentication"),
            );
        }
        auth
    }

    pub(super) fn gogs_broker(&mut self, i: usize, r: &FileRoute) -> Option<GogsBroker> {
        let key = |f: &str| format!("routes[{i}].gogs.{f}");
        if r.kind != FileRouteKind::Gogs {
            if let Some(g) = &r.gogs {
                self.report(
                    g,
                    &format!("routes[{i}].gogs"),
                    "only applies to routes of kind \"gogs\"",
                );
            }
            return None;
        }
        let default = Spanned::new(0..0, FileGogs::default());
        let g = r.gogs.as_ref().unwrap_or(&default).get_ref();
        let user_header = match &g.user_header {
            None => HeaderName::from_static(defaults::USER_HEADER),
            Some(h) => HeaderName::from_bytes(h.get_ref().as_bytes()).unwrap_or_else(|_| {
                self.report(
                    h,
                    &key("user_header"),
                    format!("{:?} is not a header name", h.get_ref()),
                );
                HeaderName::from_static(defaults::USER_HEADER)
            }),
        };
        let mut credentials = Vec::new();
        for (j, c) in g.credentials.iter().enumerate() {
            let ck = key(&format!("credentials[{j}].token"));
            let Some(token) = self.secret(&c.token_env, &c.token_file, &ck, Some(&c.username))
            else {
                continue;
            };
            if c.username.get_ref().is_empty() {
                self.report(
                    &c.username,
                    &key(&format!("credentials[{j}].username")),
                    "must not be empty",
                );
            }
            credentials.push(BrokerCredential {
                username: c.username.get_ref().clone(),
                token,
                groups: c.groups.iter().map(|g| g.get_ref().clone()).collect(),
                clients: c.clients.iter().map(|g| g.get_ref().clone()).collect(),
            });
        }
        Some(GogsBroker {
            user_header,
            credentials,
        })
    }

    pub(super) fn otlp_broker(&mut self, i: usize, r: &FileRoute) -> Option<OtlpBroker> {
        if r.kind != FileRouteKind::Otlp {
            if let Some(o) = &r.otlp {
                self.report(
                    o,
                    &format!("routes[{i}].otlp"),
                    "only applies to routes of kind \"otlp\"",
                );
            }
            return None;
        }
        let default = Spanned::new(0..0, FileOtlp::default());
        let o = r.otlp.as_ref().unwrap_or(&default).get_ref();
        let access_token = match (&o.access_token_env, &o.access_token_file) {
            (None, None) => None,
            _ => self.secret(
                &o.access_token_env,
                &o.access_token_file,
                &format!("routes[{i}].otlp.access_token"),
                None,
            ),
        };
        let mut path = |v: &Option<Spanned<String>>, key: &str| {
            let v = v.as_ref()?;
            let text = v.get_ref();
            if !text.starts_with('/')
                || text.contains(['?', '#', ' ', '%'])
                || crate::proxy::path::check_path(text).is_err()
            {
                self.report(
                    v,
                    &format!("routes[{i}].otlp.{key}"),
                    format!("{text:?} is not a plain absolute path"),
                );
            }
            Some(text.clone())
        };
        let traces_path = path(&o.traces_path, "traces_path");
        let metrics_path = path(&o.metrics_path, "metrics_path");
        let logs_path = path(&o.logs_path, "logs_path");
        Some(OtlpBroker {
            access_token,
            traces_path,
            metrics_path,
            logs_path,
        })
    }
}
