//! Signing keys of a trusted JWT issuer, fetched from its JWKS and kept fresh.
//!
//! Keys are refreshed in the background and when a token names a key the cache does not hold,
//! at most once a minute (so a storm of unknown `kid`s cannot turn the gateway into a
//! load generator against the provider). When the provider is unreachable the cached keys
//! keep verifying tokens; the failure shows in `gatehouse_jwks_refresh_total{result="error"}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::IdentityMetrics;
use super::outbound::{Outbound, OutboundError};
use crate::config::JwtIssuerConfig;

/// Minimum gap between two fetches triggered by unknown keys.
pub const MIN_REFETCH: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Family {
    fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                Family::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (Family::P256, Algorithm::ES256)
                | (Family::P384, Algorithm::ES384)
                | (Family::Ed25519, Algorithm::EdDSA)
        )
    }
}

struct KeyEntry {
    kid: Option<String>,
    family: Family,
    /// The JWK's own `alg`, when it names one.
    alg: Option<String>,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<KeyEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("discovery for {issuer}: {message}")]
    Discovery { issuer: String, message: String },
    #[error(transparent)]
    Fetch(#[from] OutboundError),
    #[error("{uri}: no usable signing keys")]
    NoKeys { uri: String },
}

/// One trusted issuer and its keys.
pub struct JwtIssuer {
    pub config: JwtIssuerConfig,
    http: Outbound,
    keys: ArcSwap<KeySet>,
    jwks_uri: ArcSwapOption<String>,
    /// Milliseconds since the Unix epoch of the last fetch attempt.
    last_attempt_ms: AtomicU64,
    fetch_lock: tokio::sync::Mutex<()>,
    metrics: Arc<IdentityMetrics>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl JwtIssuer {
    pub fn new(
        config: JwtIssuerConfig,
        http: Outbound,
        metrics: Arc<IdentityMetrics>,
    ) -> Arc<JwtIssuer> {
        Arc::new(JwtIssuer {
            jwks_uri: ArcSwapOption::from(config.jwks_uri.clone().map(Arc::new)),
            config,
            http,
            keys: ArcSwap::from_pointee(KeySet::default()),
            last_attempt_ms: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    /// An issuer whose keys are given rather than fetched (benchmarks and tests); unknown
    /// keys are not looked for for a minute.
    pub fn with_jwks(
        config: JwtIssuerConfig,
        jwks: &serde_json::Value,
        http: Outbound,
        metrics: Arc<IdentityMetrics>,
    ) -> Arc<JwtIssuer> {
        let issuer = JwtIssuer::new(config, http, metrics);
        issuer.keys.store(Arc::new(KeySet {
            keys: parse_jwks(jwks),
        }));
        issuer.last_attempt_ms.store(now_ms(), Ordering::Release);
        issuer
    }

    /// Keeps the keys fresh for as long as this issuer is in use: fetches every `every`
    /// (at least a second); after a failure, again within a minute (5 s while no keys are
    /// held at all).
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) {
        let every = every.max(Duration::from_secs(1));
        let weak: Weak<JwtIssuer> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(issuer) = weak.upgrade() else { return };
                let delay = match issuer.fetch().await {
                    Ok(()) => every,
                    // Retry sooner while no keys are held at all.
                    Err(_) if issuer.keys.load().keys.is_empty() => {
                        Duration::from_secs(5).min(every)
                    }
                    Err(_) => MIN_REFETCH.min(every),
                };
                drop(issuer);
                tokio::time::sleep(delay).await;
            }
        });
    }

    pub fn has_keys(&self) -> bool {
        !self.keys.load().keys.is_empty()
    }

    /// A key for `kid`/`alg`, fetching the JWKS again (rate-limited) when it is unknown.
    /// `Ok(None)`: the issuer has no such key; `Err`: keys could not be obtained at all.
    pub async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Option<DecodingKey>, JwksError> {
        if let Some(k) = self.find(kid, alg) {
            return Ok(Some(k));
        }
        let since = now_ms().saturating_sub(self.last_attempt_ms.load(Ordering::Acquire));
        if since >= MIN_REFETCH.as_millis() as u64 || !self.has_keys() {
            let _guard = self.fetch_lock.lock().await;
            // Another request may have fetched while this one waited.
            let since = now_ms().saturating_sub(self.last_attempt_ms.load(Ordering::Acquire));
            if (since >= MIN_REFETCH.as_millis() as u64 || (!self.has_keys() && since >= 1000))
                && let Err(e) = self.fetch_locked().await
                && !self.has_keys()
            {
                return Err(e);
            }
        }
        if !self.has_keys() {
            return Err(JwksError::NoKeys {
                uri: self.jwks_uri.load().as_deref().cloned().unwrap_or_default(),
            });
        }
        Ok(self.find(kid, alg))
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let set = self.keys.load();
        let alg_name = format!("{alg:?}");
        let fits =
            |e: &&KeyEntry| e.family.fits(alg) && e.alg.as_deref().is_none_or(|a| a == alg_name);
        match kid {
            Some(kid) => set
                .keys
                .iter()
                .filter(|e| e.kid.as_deref() == Some(kid))
                .find(fits)
                .map(|e| e.key.clone()),
            // Without a kid, only an unambiguous key is used.
            None => {
                let mut candidates = set.keys.iter().filter(fits);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => Some(only.key.clone()),
                    _ => None,
                }
            }
        }
    }

    async fn fetch(&self) -> Result<(), JwksError> {
        let _guard = self.fetch_lock.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<(), JwksError> {
        self.last_attempt_ms.store(now_ms(), Ordering::Release);
        let result = self.fetch_inner().await;
        let issuer = &self.config.issuer;
        match &result {
            Ok(n) => {
                self.metrics.jwks_refresh(issuer, true);
                tracing::debug!(%issuer, keys = n, "JWKS refreshed");
            }
            Err(e) => {
                self.metrics.jwks_refresh(issuer, false);
                tracing::warn!(%issuer, error = %e, "JWKS refresh failed; cached keys stay in use");
            }
        }
        result.map(|_| ())
    }

    async fn fetch_inner(&self) -> Result<usize, JwksError> {
        let uri = match self.jwks_uri.load_full() {
            Some(u) => u,
            None => {
                let url = format!("{}/.well-known/openid-configuration", self.config.issuer);
                let doc = self.http.get_json(&url).await?;
                let issuer = &self.config.issuer;
                let discovery = |message: &str| JwksError::Discovery {
                    issuer: issuer.clone(),
                    message: message.to_string(),
                };
                if doc
                    .get("issuer")
                    .and_then(|v| v.as_str())
                    .map(|s| s.trim_end_matches('/'))
                    != Some(issuer.as_str())
                {
                    return Err(discovery("the discovery document names a different issuer"));
                }
                let jwks = doc
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| discovery("no jwks_uri"))?;
                if !jwks.starts_with("https://") {
                    return Err(discovery("jwks_uri is not https"));
                }
                let jwks = Arc::new(jwks.to_string());
                self.jwks_uri.store(Some(jwks.clone()));
                jwks
            }
        };
        let doc = self.http.get_json(&uri).await?;
        let keys = parse_jwks(&doc);
        if keys.is_empty() {
            return Err(JwksError::NoKeys {
                uri: uri.to_string(),
            });
        }
        let n = keys.len();
        self.keys.store(Arc::new(KeySet { keys }));
        Ok(n)
    }
}

/// The usable verification keys of a JWKS document. Keys for encryption, symmetric keys and
/// keys that do not parse are skipped rather than failing the whole set.
fn parse_jwks(doc: &serde_json::Value) -> Vec<KeyEntry> {
    let Some(list) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for value in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => Family::P256,
                EllipticCurve::P384 => Family::P384,
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => Family::Ed25519,
                _ => continue,
            },
            // Never verify with a shared secret published as a key.
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        out.push(KeyEntry {
            kid: jwk.common.key_id.clone(),
            family,
            alg: value
                .get("alg")
                .and_then(|a| a.as_str())
                .map(str::to_string),
            key,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_parsing_keeps_only_signature_keys_it_can_use() {
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "rs", "use": "sig", "alg": "RS256", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
                {"kty": "RSA", "kid": "enc", "use": "enc", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "FOO", "kid": "weird"},
        ]});
        let keys = parse_jwks(&doc);
        let kids: Vec<_> = keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(kids, ["rs", "ec"]);
        assert!(keys[0].family.fits(Algorithm::PS256));
        assert!(!keys[0].family.fits(Algorithm::ES256));
        assert!(!keys[1].family.fits(Algorithm::HS256));
    }
}
