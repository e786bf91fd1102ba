//! The `[redis]` section: state shared by several replicas (webhook store, replay guard,
//! outbox, session revocations). Without it, that state is embedded in the process and its
//! data files.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::Validator;
use super::file::FileRedis;
use super::secret::SecretRef;

pub mod defaults {
    use std::time::Duration;
    pub const PREFIX: &str = "gatehouse:";
    pub const TIMEOUT: Duration = Duration::from_secs(2);
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://` (TLS); credentials never in the URL.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<SecretRef>,
    /// Private CA for `rediss://`; the system roots otherwise.
    pub ca_file: Option<PathBuf>,
    /// Every key starts with this, so one Redis can serve several deployments.
    pub prefix: String,
    /// Per command, and per connection attempt.
    pub timeout: Duration,
}

impl RedisConfig {
    pub fn tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }
}

impl Validator<'_> {
    pub(super) fn redis(&mut self, r: &FileRedis) -> Option<RedisConfig> {
        let url = self.redis_url(&r.url);
        let password = match (&r.password_env, &r.password_file) {
            (None, None) => None,
            _ => self.secret(&r.password_env, &r.password_file, "redis.password", None),
        };
        if let Some(u) = &r.username
            && (u.get_ref().is_empty() || u.get_ref().bytes().any(|b| b <= b' '))
        {
            self.report(
                u,
                "redis.username",
                "must be a non-empty name without spaces",
            );
        }
        if r.username.is_some() && password.is_none() {
            self.report_unplaced(
                "redis.username",
                "an ACL user needs password_env or password_file",
            );
        }
        let prefix = match &r.prefix {
            Some(p) => {
                let text = p.get_ref();
                if text.is_empty()
                    || text.len() > 64
                    || text.bytes().any(|b| b <= b' ' || b == 0x7f)
                {
                    self.report(
                        p,
                        "redis.prefix",
                        "must be 1 to 64 printable characters without spaces",
                    );
                }
                text.clone()
            }
            None => defaults::PREFIX.to_string(),
        };
        let ca_file = r.ca_file.as_ref().map(|f| self.path(f.get_ref()));
        if let (Some(f), Some(u)) = (&r.ca_file, &url)
            && !u.starts_with("rediss://")
        {
            self.report(f, "redis.ca_file", "only used with a rediss:// (TLS) url");
        }
        let timeout = self.duration(&r.timeout, "redis.timeout", defaults::TIMEOUT);
        Some(RedisConfig {
            url: url?,
            username: r.username.as_ref().map(|u| u.get_ref().clone()),
            password,
            ca_file,
            prefix,
            timeout,
        })
    }

    fn redis_url(&mut self, value: &Spanned<String>) -> Option<String> {
        let text = value.get_ref();
        let rest = text
            .strip_prefix("redis://")
            .or_else(|| text.strip_prefix("rediss://"));
        let Some(rest) = rest else {
            self.report(
                value,
                "redis.url",
                format!("{text:?}: expected redis://HOST:PORT[/DB] or rediss://HOST:PORT[/DB]"),
            );
            return None;
        };
        let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            self.report(
                value,
                "redis.url",
                "credentials do not go in the url: use username and password_env or password_file",
            );
            return None;
        }
        if authority.is_empty() || authority.parse::<http::uri::Authority>().is_err() {
            self.report(
                value,
                "redis.url",
                format!("{authority:?} is not HOST:PORT"),
            );
            return None;
        }
        if !db.is_empty() && db.parse::<u16>().is_err() {
            self.report(
                value,
                "redis.url",
                format!("{db:?} is not a database number"),
            );
            return None;
        }
        Some(text.clone())
    }
}
