//! Identity metrics, registered once per process beside the gateway's other metrics.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::AuthMethod;

/// Counters touched on every request are resolved once, so recording is an atomic add.
pub struct IdentityMetrics {
    auth: [IntCounter; 3],
    rejected: IntCounterVec,
    jwks: IntCounterVec,
    cache_hit: IntCounter,
    cache_miss: IntCounter,
    logins: IntCounterVec,
    refreshes: IntCounterVec,
}

impl IdentityMetrics {
    pub fn new(registry: &Registry) -> Result<IdentityMetrics, prometheus::Error> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let auth = counter(
            "gatehouse_auth_total",
            "Authenticated requests, by method.",
            &["method"],
        )?;
        let cache = counter(
            "gatehouse_token_cache_total",
            "Verified-token cache lookups, by result.",
            &["result"],
        )?;
        Ok(IdentityMetrics {
            auth: [AuthMethod::Session, AuthMethod::Bearer, AuthMethod::Basic]
                .map(|m| auth.with_label_values(&[m.as_str()])),
            cache_hit: cache.with_label_values(&["hit"]),
            cache_miss: cache.with_label_values(&["miss"]),
            rejected: counter(
                "gatehouse_auth_rejected_total",
                "Credentials refused, by reason.",
                &["reason"],
            )?,
            jwks: counter(
                "gatehouse_jwks_refresh_total",
                "JWKS fetches, by issuer and result.",
                &["issuer", "result"],
            )?,
            logins: counter(
                "gatehouse_oidc_logins_total",
                "Browser sign-ins, by result.",
                &["result"],
            )?,
            refreshes: counter(
                "gatehouse_session_refresh_total",
                "Session token refreshes, by result.",
                &["result"],
            )?,
        })
    }

    pub fn authenticated(&self, method: AuthMethod) {
        self.auth[method as usize].inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    pub fn jwks_refresh(&self, issuer: &str, ok: bool) {
        self.jwks
            .with_label_values(&[issuer, if ok { "success" } else { "error" }])
            .inc();
    }

    pub fn token_cache(&self, hit: bool) {
        if hit {
            self.cache_hit.inc()
        } else {
            self.cache_miss.inc()
        }
    }

    pub fn login(&self, result: &str) {
        self.logins.with_label_values(&[result]).inc();
    }

    pub fn refresh(&self, result: &str) {
        self.refreshes.with_label_values(&[result]).inc();
    }
}
