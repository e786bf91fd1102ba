//! JWT bearer tokens: for machines (client credentials), the CLI and git (as the password of
//! `Authorization: Basic`).
//!
//! A token is accepted only when: its `alg` is one the issuer's config allows (never `none`,
//! never a shared-secret algorithm: the key type comes from the JWK, not from the token);
//! its `iss` is a configured issuer; the signature verifies with that issuer's key named by
//! `kid` (the `kid` is only a lookup key); `exp`, `iss`, `aud` and `sub` are present and valid
//! within the configured leeway; `nbf` and `iat` are not in the future; the claims the gateway
//! reads have the right types; and it is not an ID token (a `nonce` claim, a `typ` claim of
//! `ID` as Keycloak marks them, or a header `typ`
//! other than JWT/at+jwt). Verified tokens are cached by their SHA-256 until they expire
//! (at most five minutes), so repeated requests skip the signature check. When the cache is
//! full, the tokens not presented since the last sweep make room (at most one sweep a second),
//! so a burst of one-off tokens cannot push out the ones in steady use.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aws_lc_rs::digest;
use dashmap::DashMap;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::JwtIssuer;
use super::session::now;
use super::{Identity, IdentityMetrics};

/// Most verified tokens remembered.
const CACHE_CAPACITY: usize = 100_000;
/// Longest a verified token is trusted without checking its signature again.
const CACHE_TTL: u64 = 300;

/// Why a token was refused; the text is safe to show the caller and to audit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("token is not a JWT")]
    Malformed,
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("issuer is not trusted")]
    UntrustedIssuer,
    #[error("signing key is unknown")]
    UnknownKey,
    #[error("signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("audience is not accepted")]
    WrongAudience,
    #[error("required claim {0} is missing")]
    MissingClaim(&'static str),
    #[error("claim {0} has the wrong type")]
    BadClaim(String),
    #[error("ID tokens are not accepted as access tokens")]
    IdToken,
    #[error("cannot verify tokens: the identity provider's keys are unavailable")]
    KeysUnavailable,
}

impl Rejection {
    /// Short label for metrics and audit.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Algorithm(_) => "algorithm",
            Rejection::UntrustedIssuer => "issuer",
            Rejection::UnknownKey => "unknown_kid",
            Rejection::BadSignature => "signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::WrongAudience => "audience",
            Rejection::MissingClaim(_) => "missing_claim",
            Rejection::BadClaim(_) => "claim_type",
            Rejection::IdToken => "id_token",
            Rejection::KeysUnavailable => "keys_unavailable",
        }
    }
}

struct Cached {
    identity: Arc<Identity>,
    until: u64,
    /// Set by a hit, cleared by a sweep: what was not used since the last sweep is evicted
    /// first when the cache is full (second chance), so tokens in use stay cached however
    /// many other tokens arrive.
    used: AtomicBool,
}

/// Verifies bearer JWTs against every configured issuer.
pub struct BearerVerifier {
    issuers: Vec<Arc<JwtIssuer>>,
    cache: DashMap<[u8; 32], Cached>,
    capacity: usize,
    /// When the full cache was last swept (seconds): at most one O(n) sweep a second, so
    /// a full cache does not make every miss walk it.
    swept: AtomicU64,
    metrics: Arc<IdentityMetrics>,
}

impl BearerVerifier {
    pub fn new(issuers: Vec<Arc<JwtIssuer>>, metrics: Arc<IdentityMetrics>) -> Self {
        BearerVerifier {
            issuers,
            cache: DashMap::new(),
            capacity: CACHE_CAPACITY,
            swept: AtomicU64::new(0),
            metrics,
        }
    }

    /// A smaller cache, so tests can fill it.
    #[cfg(test)]
    fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    pub fn issuers(&self) -> &[Arc<JwtIssuer>] {
        &self.issuers
    }

    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, Rejection> {
        let mut key = [0u8; 32];
        key.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        let now = now();
        if let Some(hit) = self.cache.get(&key)
            && hit.until > now
        {
            self.metrics.token_cache(true);
            // Read first: a token in steady use costs no write to a shared cache line.
            if !hit.used.load(Ordering::Relaxed) {
                hit.used.store(true, Ordering::Relaxed);
            }
            return Ok(hit.identity.clone());
        }
        self.metrics.token_cache(false);
        // Boxed: the cached path is the common one and should not carry this future's size.
        let (identity, exp) = Box::pin(self.verify_uncached(token, now)).await?;
        let identity = Arc::new(identity);
        if self.cache.len() >= self.capacity && self.swept.swap(now, Ordering::Relaxed) != now {
            // Expired tokens go, and so do those nobody presented since the last sweep.
            self.cache
                .retain(|_, c| c.until > now && c.used.swap(false, Ordering::Relaxed));
        }
        if self.cache.len() < self.capacity {
            self.cache.insert(
                key,
                Cached {
                    identity: identity.clone(),
                    until: exp.min(now + CACHE_TTL),
                    used: AtomicBool::new(false),
                },
            );
        }
        Ok(identity)
    }

    async fn verify_uncached(&self, token: &str, now: u64) -> Result<(Identity, u64), Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        if let Some(typ) = &header.typ
            && !["jwt", "at+jwt", "application/at+jwt"].contains(&typ.to_ascii_lowercase().as_str())
        {
            return Err(Rejection::IdToken);
        }
        // The issuer picks the keys; it is read before verification only to choose them,
        // and checked again by the verification itself.
        let unverified: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| Rejection::Malformed)?;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(Rejection::MissingClaim("iss"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss.trim_end_matches('/') || i.config.issuer == iss)
            .ok_or(Rejection::UntrustedIssuer)?;
        let cfg = &issuer.config;
        if !cfg.algorithms.contains(&header.alg)
            || matches!(
                header.alg,
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
            )
        {
            return Err(Rejection::Algorithm(format!("{:?}", header.alg)));
        }
        let key = match issuer.key_for(header.kid.as_deref(), header.alg).await {
            Ok(Some(k)) => k,
            Ok(None) => return Err(Rejection::UnknownKey),
            Err(_) => return Err(Rejection::KeysUnavailable),
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[iss]);
        validation.set_audience(&cfg.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = cfg.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature
                    | K::InvalidEcdsaKey
                    | K::InvalidRsaKey(_)
                    | K::InvalidKeyFormat => Rejection::BadSignature,
                    K::ExpiredSignature => Rejection::Expired,
                    K::ImmatureSignature => Rejection::NotYetValid,
                    K::InvalidAudience => Rejection::WrongAudience,
                    K::InvalidIssuer => Rejection::UntrustedIssuer,
                    K::MissingRequiredClaim(c) => Rejection::MissingClaim(match c.as_str() {
                        "exp" => "exp",
                        "iss" => "iss",
                        "aud" => "aud",
                        _ => "sub",
                    }),
                    K::InvalidClaimFormat(c) => Rejection::BadClaim(c.clone()),
                    K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
                        Rejection::Algorithm(format!("{:?}", header.alg))
                    }
                    _ => Rejection::Malformed,
                }
            })?;
        let claims = data.claims;
        // The audience is the main defence (ID tokens name the client, access tokens the API);
        // these markers catch ID tokens where an operator lists a client id as an audience.
        // `at_hash` alone is not one: some providers (Dex) put it in access tokens too.
        let typ_claim = claims
            .get("typ")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase);
        if claims.contains_key("nonce") || matches!(typ_claim.as_deref(), Some("id" | "id_token")) {
            return Err(Rejection::IdToken);
        }
        if let Some(iat) = claims.get("iat") {
            let iat = iat
                .as_u64()
                .ok_or_else(|| Rejection::BadClaim("iat".into()))?;
            if iat > now + cfg.leeway.as_secs() {
                return Err(Rejection::NotYetValid);
            }
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| Rejection::BadClaim("exp".into()))?;
        let identity = identity_from_claims(
            &claims,
            &cfg.issuer,
            &cfg.username_claim,
            &cfg.groups_claim,
            exp,
        )?;
        Ok((identity, exp))
    }
}

/// The identity in verified claims, refusing claims of the wrong type rather than guessing.
pub fn identity_from_claims(
    claims: &Map<String, Value>,
    issuer: &str,
    username_claim: &str,
    groups_claim: &str,
    expires_at: u64,
) -> Result<Identity, Rejection> {
    let string = |name: &str| -> Result<Option<String>, Rejection> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Rejection::BadClaim(name.to_string())),
        }
    };
    let subject = string("sub")?
        .filter(|s| !s.is_empty())
        .ok_or(Rejection::MissingClaim("sub"))?;
    let email_verified = match claims.get("email_verified") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Rejection::BadClaim("email_verified".into())),
    };
    let groups = match claims.get(groups_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|g| {
                g.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Rejection::BadClaim(groups_claim.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(Rejection::BadClaim(groups_claim.to_string())),
    };
    // RFC 9068 names the client `client_id`; many providers put it in `azp`, and Okta's
    // authorization servers in `cid`.
    let client_id = match string("client_id")? {
        Some(c) => Some(c),
        None => match string("azp")? {
            Some(c) => Some(c),
            None => string("cid")?,
        },
    };
    Ok(Identity {
        subject,
        issuer: issuer.to_string(),
        username: string(username_claim)?,
        email: string("email")?,
        email_verified,
        groups,
        client_id,
        expires_at,
    })
}

#[cfg(test)]
mod tests;
