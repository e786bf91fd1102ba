//! Gogs webhooks: verified on the way in, de-duplicated, their commits recorded, and forwarded
//! re-signed to the receivers the operator lists, through a durable outbox.
//!
//! [`Hooks`] is what one configuration says (sources with their secrets, receivers with their
//! secrets and clients) and is rebuilt on reload; the store and the [`forward::Forwarder`]
//! live as long as the process.

pub mod event;
pub mod forward;
pub mod metrics;
pub mod receive;
pub mod redis_store;
pub mod signature;
pub mod store;

use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher};

use crate::config::secret::{Secret, SecretError};
use crate::config::{WebhookReceiver, WebhookSource, WebhooksConfig};
pub use forward::Forwarder;
pub use metrics::WebhookMetrics;
pub use redis_store::RedisStore;
pub use store::{HookStore, SqliteStore};

/// A repository glob: `owner/name`, case-insensitive, `*` within a segment, `**` across.
pub fn glob(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .case_insensitive(true)
        .backslash_escape(true)
        .empty_alternates(false)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| e.kind().to_string())
}

fn globs(patterns: &[String]) -> Vec<GlobMatcher> {
    patterns.iter().filter_map(|p| glob(p).ok()).collect()
}

/// `true` when `globs` is empty (no filter) or one matches.
fn covers(globs: &[GlobMatcher], repo: &str) -> bool {
    globs.is_empty() || globs.iter().any(|g| g.is_match(repo))
}

#[derive(Debug, thiserror::Error)]
pub enum HooksBuildError {
    #[error("webhooks.{what} {name}: {error}")]
    Secret {
        what: &'static str,
        name: String,
        error: SecretError,
    },
    #[error("webhooks.receivers {name}: {error}")]
    Client { name: String, error: String },
}

pub struct LoadedSource {
    pub name: String,
    pub secret: Option<Secret>,
    globs: Vec<GlobMatcher>,
}

pub struct LoadedReceiver {
    pub config: WebhookReceiver,
    pub secret: Secret,
    /// The Standard Webhooks key (`whsec_` secrets decoded).
    pub standard_key: Vec<u8>,
    globs: Vec<GlobMatcher>,
    pub client: forward::ReceiverClient,
}

/// The webhook side of one configuration.
pub struct Hooks {
    pub config: WebhooksConfig,
    pub sources: Vec<LoadedSource>,
    pub receivers: Vec<Arc<LoadedReceiver>>,
}

impl Hooks {
    /// Reads the secrets and builds the receivers' clients. No network calls.
    pub fn build(config: &WebhooksConfig) -> Result<Hooks, HooksBuildError> {
        let sources = config
            .sources
            .iter()
            .map(|s: &WebhookSource| {
                let secret = match &s.secret {
                    Some(r) => Some(r.load().map_err(|error| HooksBuildError::Secret {
                        what: "sources",
                        name: s.name.clone(),
                        error,
                    })?),
                    None => None,
                };
                Ok(LoadedSource {
                    name: s.name.clone(),
                    secret,
                    globs: globs(&s.repos),
                })
            })
            .collect::<Result<Vec<_>, HooksBuildError>>()?;
        let receivers = config
            .receivers
            .iter()
            .map(|r| {
                let secret = r.secret.load().map_err(|error| HooksBuildError::Secret {
                    what: "receivers",
                    name: r.name.clone(),
                    error,
                })?;
                let client = forward::client(r).map_err(|error| HooksBuildError::Client {
                    name: r.name.clone(),
                    error,
                })?;
                Ok(Arc::new(LoadedReceiver {
                    standard_key: signature::standard_key(secret.expose()),
                    secret,
                    globs: globs(&r.repos),
                    client,
                    config: r.clone(),
                }))
            })
            .collect::<Result<Vec<_>, HooksBuildError>>()?;
        Ok(Hooks {
            config: config.clone(),
            sources,
            receivers,
        })
    }

    /// The first source whose repositories cover `repo`.
    pub fn source_for(&self, repo: &str) -> Option<&LoadedSource> {
        self.sources.iter().find(|s| covers(&s.globs, repo))
    }

    /// Names of the receivers that want `event` of `repo`.
    pub fn receivers_for<'a>(
        &'a self,
        event: &'a str,
        repo: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.receivers
            .iter()
            .filter(move |r| {
                (r.config.events.is_empty() || r.config.events.iter().any(|e| e == event))
                    && covers(&r.globs, repo)
            })
            .map(|r| r.config.name.as_str())
    }

    pub fn receiver(&self, name: &str) -> Option<&Arc<LoadedReceiver>> {
        self.receivers.iter().find(|r| r.config.name == name)
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
