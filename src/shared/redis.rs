//! One multiplexed Redis connection for the process, reconnected in the background, with
//! retries for commands a dropped connection failed, a per-command timeout and the metrics
//! operators alert on (`gatehouse_redis_up`, `gatehouse_redis_errors_total`).
//!
//! The stores behind it are synchronous traits called from blocking threads (as SQLite is),
//! so [`Redis::block`] runs a command to completion on the process's runtime.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionInfo, IntoConnectionInfo, RedisResult};

use crate::config::RedisConfig;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis.url: {0}")]
    Url(String),
    #[error("redis.password: {0}")]
    Password(#[from] crate::config::SecretError),
    #[error("redis.ca_file {path}: {error}")]
    Ca { path: String, error: std::io::Error },
    #[error("redis.ca_file {0}: no PEM certificate in it")]
    CaEmpty(String),
    #[error("redis {operation}: {message}")]
    Command {
        operation: &'static str,
        message: String,
    },
}

/// What `gatehouse check` can know without connecting: the password is readable and the CA
/// file holds certificates.
pub fn check(config: &RedisConfig) -> Result<(), RedisError> {
    if let Some(p) = &config.password {
        p.load()?;
    }
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|error| RedisError::Ca {
            path: path.display().to_string(),
            error,
        })?;
        use rustls_pki_types::pem::PemObject;
        if rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .filter_map(Result::ok)
            .next()
            .is_none()
        {
            return Err(RedisError::CaEmpty(path.display().to_string()));
        }
    }
    Ok(())
}

pub struct RedisMetrics {
    pub up: IntGauge,
    /// `operation`: what failed (receive, take_due, revocations, ...).
    pub errors: IntCounterVec,
}

impl RedisMetrics {
    pub fn new(registry: &Registry) -> Result<RedisMetrics, prometheus::Error> {
        let m = RedisMetrics::unregistered()?;
        registry.register(Box::new(m.up.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        Ok(m)
    }

    pub fn unregistered() -> Result<RedisMetrics, prometheus::Error> {
        Ok(RedisMetrics {
            up: IntGauge::new(
                "gatehouse_redis_up",
                "1 when the last Redis command succeeded, 0 when it failed to reach Redis (absent or 0 without [redis]).",
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "gatehouse_redis_errors_total",
                    "Redis commands that failed after their retries, by operation.",
                ),
                &["operation"],
            )?,
        })
    }
}

pub struct Redis {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    handle: tokio::runtime::Handle,
    /// Where it is, for messages (never credentials: the url holds none).
    pub url: String,
    pub metrics: Arc<RedisMetrics>,
}

impl Redis {
    /// Prepares the connection; it is made at the first command, so the gateway starts (and
    /// serves what needs no Redis) while Redis is down. Needs a Tokio runtime.
    pub fn connect(config: &RedisConfig, metrics: Arc<RedisMetrics>) -> Result<Redis, RedisError> {
        let mut info: ConnectionInfo = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| RedisError::Url(e.to_string()))?;
        let mut settings = info.redis_settings().clone();
        if let Some(u) = &config.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &config.password {
            settings = settings.set_password(p.load()?.expose());
        }
        settings = settings.set_lib_name("gatehouse", env!("CARGO_PKG_VERSION"));
        info = info.set_redis_settings(settings);
        let client = match (&config.ca_file, config.tls()) {
            (Some(path), true) => {
                let root = std::fs::read(path).map_err(|error| RedisError::Ca {
                    path: path.display().to_string(),
                    error,
                })?;
                Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                )
            }
            _ => Client::open(info),
        }
        .map_err(|e| RedisError::Url(e.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| RedisError::Url(e.to_string()))?;
        Ok(Redis {
            conn,
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            handle: tokio::runtime::Handle::current(),
            url: config.url.clone(),
            metrics,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix` + `name`.
    pub fn key(&self, name: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + name.len());
        k.push_str(&self.prefix);
        k.push_str(name);
        k
    }

    /// Runs `f` on a connection, retrying while the connection is being re-established, for
    /// at most the configured timeout in all; counts failures under `operation`. Commands
    /// sent twice must be safe to repeat (the scripts are written so).
    pub async fn run<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T, RedisError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut last = format!("no answer within {:?}", self.timeout);
        let mut pause = Duration::from_millis(50);
        loop {
            match tokio::time::timeout_at(deadline, f(self.conn.clone())).await {
                Ok(Ok(v)) => {
                    self.metrics.up.set(1);
                    return Ok(v);
                }
                Ok(Err(e)) => {
                    let transient = e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal()
                        || e.is_timeout();
                    last = e.to_string();
                    if !transient {
                        // Redis answered: it is up, the command was refused.
                        self.metrics.up.set(1);
                        break;
                    }
                    self.metrics.up.set(0);
                }
                Err(_) => {
                    self.metrics.up.set(0);
                    break;
                }
            }
            if tokio::time::Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(400));
        }
        self.metrics.errors.with_label_values(&[operation]).inc();
        Err(RedisError::Command {
            operation,
            message: last,
        })
    }

    /// Runs `fut` to completion from a blocking thread (never from async code).
    pub fn block<T>(&self, fut: impl Future<Output = T>) -> T {
        self.handle.block_on(fut)
    }

    /// Whether Redis keeps an append-only file: without one, a restart loses writes
    /// acknowledged since the last snapshot.
    pub async fn aof_enabled(&self) -> Result<bool, RedisError> {
        let info: String = self
            .run("info", |mut c| async move {
                redis::cmd("INFO")
                    .arg("persistence")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(info.lines().any(|l| l.trim() == "aof_enabled:1"))
    }
}
