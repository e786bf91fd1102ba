//! Listeners, the accept loop, signals and graceful shutdown.
//!
//! Plumbing only: this module moves bytes and connections and knows nothing of routes or
//! policy; every request is handed to [`crate::proxy::Gateway::handle`].

pub mod conn;
pub mod h1_guard;
pub mod proxy_protocol;
pub mod reload;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::proxy::{Gateway, Runtime};
use crate::telemetry::metrics::Metrics;
use conn::{Accepted, ConnSettings};
use tls::{CertResolver, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    #[error(transparent)]
    Runtime(#[from] crate::proxy::RuntimeError),
    #[error("cannot write {}: {source}", path.display())]
    AddrFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signal handling: {0}")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    WebhookStore(#[from] crate::webhook::store::StoreError),
    #[error("audit: {0}")]
    Audit(#[from] crate::audit::StartError),
    #[error("audit: no [audit] section")]
    NoAudit,
    #[error("webhooks: no store (set [webhooks] store, or configure [redis])")]
    NoWebhookStore,
    #[error(transparent)]
    Redis(#[from] crate::shared::redis::RedisError),
    #[error(transparent)]
    Traces(#[from] crate::telemetry::traces::TracesError),
}

/// Options that are about this process rather than the gateway's configuration.
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    /// Write the bound addresses here once listening (`https=...`, `http=...`, `metrics=...`
    /// lines), so supervisors and tests can use port 0.
    pub addr_file: Option<PathBuf>,
}

/// Runs the gateway until SIGTERM or SIGINT, then drains.
pub async fn serve(config: Config, options: ServeOptions) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new().map_err(ServeError::Metrics)?);
    let resolver = match &config.tls {
        Some(t) => Some(CertResolver::new(tls::load_certified_key(
            &t.cert_file,
            &t.key_file,
        )?)),
        None => None,
    };
    let acceptor = match &resolver {
        Some(r) => Some(TlsAcceptor::from(tls::server_config(r.clone())?)),
        None => None,
    };
    let max_connections = config.server.max_connections;
    let grace = config.server.shutdown_grace;
    let settings = Arc::new(ArcSwap::from_pointee(ConnSettings::from(&config)));
    // State shared by replicas: connected lazily, so the gateway starts (and serves what
    // needs no Redis) while Redis is down.
    let redis = match &config.redis {
        Some(r) => {
            let redis_metrics = Arc::new(
                crate::shared::redis::RedisMetrics::new(metrics.registry())
                    .map_err(ServeError::Metrics)?,
            );
            Some(Arc::new(crate::shared::redis::Redis::connect(
                r,
                redis_metrics,
            )?))
        }
        None => None,
    };
    let revocations = match &redis {
        Some(r) => crate::identity::revocation::Revocations::shared(r.clone()),
        None => crate::identity::revocation::Revocations::embedded(),
    }
    .map_err(ServeError::Metrics)?;
    revocations
        .register(metrics.registry())
        .map_err(ServeError::Metrics)?;
    let runtime = Runtime::build(config.clone(), &metrics, &revocations)?;
    // The audit log outlives reloads: one writer, one chain, for the life of the process.
    let audit_config = config.audit.as_ref().ok_or(ServeError::NoAudit)?;
    if audit_config.signing_key_file.is_none() {
        tracing::warn!("audit.signing_key_file is not set: checkpoints are not signed");
    }
    let audit = crate::audit::AuditLog::start(audit_config.writer(), metrics.audit.clone())?;
    audit.submit(crate::audit::Record::event(
        crate::audit::Kind::ConfigReload,
        format!(
            "gatehouse {} started with {} ({} routes); {}",
            env!("CARGO_PKG_VERSION"),
            config.source.display(),
            config.routes.len(),
            reload::policy_summary("policy", &runtime.policy.current()),
        ),
    ));
    runtime.start();
    let (stop_tx, stop_rx) = watch::channel(false);
    revocations.start(stop_rx.clone());
    if let Some(r) = &redis {
        let r = r.clone();
        tokio::spawn(async move {
            match r.aof_enabled().await {
                Ok(true) => {
                    tracing::info!(url = %r.url, "Redis reached; it keeps an append-only file")
                }
                Ok(false) => {
                    tracing::warn!(url = %r.url, "Redis has appendonly off: a Redis restart loses webhook deliveries and revocations acknowledged since its last snapshot (see docs/operations.md)")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Redis cannot be reached yet; webhook intake answers 503 until it can")
                }
            }
        });
    }
    // The gateway's own spans: the exporter lives as long as the process (changing
    // [telemetry.traces] needs a restart).
    let tracer = match &config.telemetry {
        Some(t) => Some(crate::telemetry::traces::Tracer::start(
            t,
            tokio::runtime::Handle::current(),
            metrics.traces.clone(),
        )?),
        None => None,
    };
    // The webhook store and its forwarder outlive reloads too; pending forwards left by a
    // previous run are picked up at once, except those in flight when it stopped, which wait
    // out their lease (the longest receiver timeout + 30 s).
    let webhooks = match &config.webhooks {
        Some(w) => {
            let store: Arc<dyn crate::webhook::HookStore> = match (&redis, &w.store) {
                (Some(r), _) => Arc::new(crate::webhook::RedisStore::new(r.clone())),
                (None, Some(path)) => Arc::new(crate::webhook::SqliteStore::open(path)?),
                (None, None) => return Err(ServeError::NoWebhookStore),
            };
            let hooks = Arc::new(arc_swap::ArcSwapOption::from(runtime.hooks.clone()));
            let forwarder = crate::webhook::Forwarder::start(
                store.clone(),
                hooks.clone(),
                audit.clone(),
                metrics.webhooks.clone(),
                stop_rx.clone(),
            );
            let service = crate::proxy::webhook::WebhookService {
                commits: Arc::new(crate::attribution::CommitCache::new(Some(store.clone()))),
                tracer: tracer.clone(),
                store,
                forwarder,
                metrics: metrics.webhooks.clone(),
                hooks,
            };
            service.start_pruning(stop_rx.clone());
            Some(service)
        }
        None => None,
    };
    let gateway = Gateway::new(runtime, metrics.clone(), audit, webhooks, tracer);
    let limits = Arc::new(Semaphore::new(max_connections));

    let mut addr_lines = String::new();
    let mut listeners = Vec::new();
    for (addr, tls) in config
        .server
        .listen
        .iter()
        .map(|a| (*a, true))
        .chain(config.server.plaintext_listen.iter().map(|a| (*a, false)))
    {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        addr_lines.push_str(&format!("{}={local}\n", if tls { "https" } else { "http" }));
        tracing::info!(address = %local, tls, "listening");
        listeners.push((listener, tls));
    }
    if let Some(m) = &config.metrics {
        let listener = TcpListener::bind(m.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: m.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: m.listen,
            source,
        })?;
        addr_lines.push_str(&format!("metrics={local}\n"));
        tracing::info!(address = %local, "metrics listening");
        tokio::spawn(crate::telemetry::serve_metrics(
            listener,
            metrics.clone(),
            stop_rx.clone(),
        ));
    }
    // Reload triggers (SIGHUP, file watches) are in place before anyone learns the
    // addresses: a change made right after start is not missed.
    reload::spawn(reload::Reloader {
        gateway: gateway.clone(),
        resolver,
        settings: settings.clone(),
        config_path: config.source.clone(),
        tls: config.tls.clone(),
        policy_dir: config
            .policy
            .as_ref()
            .filter(|p| p.watch)
            .map(|p| p.dir.clone()),
    })
    .map_err(ServeError::Signal)?;
    if let Some(path) = &options.addr_file {
        write_atomically(path, &addr_lines).map_err(|source| ServeError::AddrFile {
            path: path.clone(),
            source,
        })?;
    }

    let mut loops = Vec::new();
    for (listener, tls) in listeners {
        loops.push(tokio::spawn(accept_loop(AcceptLoop {
            listener,
            tls: if tls { acceptor.clone() } else { None },
            gateway: gateway.clone(),
            settings: settings.clone(),
            limits: limits.clone(),
            stop: stop_rx.clone(),
        })));
    }

    wait_for_stop_signal().await.map_err(ServeError::Signal)?;
    tracing::info!(grace = ?grace, "shutting down: no new connections, draining in-flight requests");
    gateway.start_draining();
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(grace, limits.acquire_many(all)).await {
        Ok(_) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(
            open = max_connections - limits.available_permits(),
            "drain deadline reached; closing remaining connections"
        ),
    }
    // Everything queued is written, then a final signed checkpoint.
    gateway.audit.submit(crate::audit::Record::event(
        crate::audit::Kind::Admin,
        "gatehouse stopped".to_string(),
    ));
    gateway.audit.shutdown().await;
    tracing::info!("audit log closed");
    if let Some(t) = gateway.tracer() {
        t.shutdown(std::time::Duration::from_secs(5)).await;
    }
    Ok(())
}

/// Resolves once shutdown has been signalled (or the signalling side is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

async fn wait_for_stop_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

struct AcceptLoop {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gateway: Arc<Gateway>,
    settings: Arc<ArcSwap<ConnSettings>>,
    limits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

/// Accepts while a connection slot is free; when `max_connections` are open it stops
/// accepting (the kernel queues new connections) instead of accepting and dropping them.
async fn accept_loop(mut l: AcceptLoop) {
    loop {
        if l.limits.available_permits() == 0 {
            l.gateway.metrics.connection_limit_reached.inc();
        }
        let permit = tokio::select! {
            p = l.limits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = stopped(&mut l.stop) => return,
        };
        let (stream, peer) = tokio::select! {
            r = l.listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut l.stop) => return,
        };
        tokio::spawn(conn::serve(Accepted {
            stream,
            peer,
            tls: l.tls.clone(),
            gateway: l.gateway.clone(),
            settings: (**l.settings.load()).clone(),
            permit,
            shutdown: l.stop.clone(),
        }));
    }
}
