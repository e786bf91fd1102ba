//! Reloading configuration and certificates while serving.
//!
//! Triggers: SIGHUP (config and certificate), and a change to the config file or the
//! certificate/key files when `tls.watch` is on. Each candidate is loaded and validated in
//! full before it replaces anything; on any error the running configuration or certificate
//! stays, the error is logged with its location, and `..._reloads_total{result="error"}` rises.
//! Listener addresses are bound once: a changed address is reported and needs a restart.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::conn::ConnSettings;
use super::tls::CertResolver;
use crate::audit::{Kind, Record};
use crate::config::{Config, TlsConfig};
use crate::proxy::{Gateway, Runtime};

/// What an auditor needs to know about a policy: which files, which content.
pub fn policy_summary(what: &str, policy: &crate::policy::CompiledPolicy) -> String {
    if policy.digest.is_empty() {
        return format!("{what}: none configured (every authenticated request is denied)");
    }
    let files: Vec<String> = policy
        .files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    format!(
        "{what}: {} rules from {} (sha256 {})",
        policy.rule_count,
        if files.is_empty() {
            "no files".to_string()
        } else {
            files.join(", ")
        },
        policy.digest
    )
}

/// Files may be written in several steps (certificate, then key); wait for quiet first.
const DEBOUNCE: Duration = Duration::from_millis(300);

pub struct Reloader {
    pub gateway: Arc<Gateway>,
    pub resolver: Option<Arc<CertResolver>>,
    pub settings: Arc<ArcSwap<ConnSettings>>,
    pub config_path: PathBuf,
    pub tls: Option<TlsConfig>,
    /// Watched policy directory.
    pub policy_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Trigger {
    Signal,
    ConfigFile,
    CertFile,
    PolicyFile,
}

pub fn spawn(mut r: Reloader) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Trigger>();
    let config_path = std::path::absolute(&r.config_path)?;
    // Watching starts before this returns, so a file changed right after start is seen.
    let mut watch = FileWatch::new(tx);
    watch.update(&config_path, r.tls.as_ref(), r.policy_dir.as_deref());
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                _ = hup.recv() => Trigger::Signal,
                t = rx.recv() => match t { Some(t) => t, None => return },
            };
            let mut triggers = HashSet::from([first]);
            tokio::time::sleep(DEBOUNCE).await;
            while let Ok(t) = rx.try_recv() {
                triggers.insert(t);
            }
            let config_changed =
                triggers.contains(&Trigger::Signal) || triggers.contains(&Trigger::ConfigFile);
            let mut policy_reloaded = false;
            if config_changed {
                policy_reloaded = r.reload_config(&config_path);
                watch.update(&config_path, r.tls.as_ref(), r.policy_dir.as_deref());
            }
            if !policy_reloaded
                && (triggers.contains(&Trigger::PolicyFile) || triggers.contains(&Trigger::Signal))
            {
                r.reload_policy();
            }
            if config_changed || triggers.contains(&Trigger::CertFile) {
                r.reload_certificate();
            }
        }
    });
    Ok(())
}

impl Reloader {
    /// Re-reads the policy directory; the policy in force stays on any error.
    fn reload_policy(&self) {
        let metrics = &self.gateway.metrics;
        let rt = self.gateway.runtime();
        match rt.policy.reload() {
            Ok(policy) => {
                let rules = policy.rule_count;
                metrics.policy_reloaded(true);
                metrics.policy_rules.set(rules as i64);
                tracing::info!(rules, digest = %policy.digest, "policy reloaded");
                self.gateway.audit.submit(Record::event(
                    Kind::PolicyReload,
                    policy_summary("policy reloaded", &policy),
                ));
            }
            Err(e) => {
                metrics.policy_reloaded(false);
                self.gateway.audit.submit(Record::event(
                    Kind::PolicyReload,
                    format!(
                        "policy reload failed; the policy in force stays (sha256 {}): {e}",
                        rt.policy.current().digest
                    ),
                ));
                for line in e.to_string().lines() {
                    tracing::error!(
                        problem = line,
                        "policy reload failed; the policy in force stays"
                    );
                }
            }
        }
    }

    /// Returns whether a new configuration (with its freshly loaded policy) was installed.
    fn reload_config(&mut self, path: &Path) -> bool {
        let metrics = self.gateway.metrics.clone();
        let config = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                for line in e.to_string().lines() {
                    tracing::error!(
                        problem = line,
                        "configuration reload failed; the running configuration stays"
                    );
                }
                metrics.config_reloaded(false);
                self.audit_config_failure(path, &e.to_string());
                return false;
            }
        };
        let old = self.gateway.runtime();
        if old.config.audit.as_ref().map(|a| (&a.dir, &a.replica))
            != config.audit.as_ref().map(|a| (&a.dir, &a.replica))
        {
            tracing::warn!("audit dir or replica changed; they take effect after a restart");
        }
        if old.config.server.listen != config.server.listen
            || old.config.server.plaintext_listen != config.server.plaintext_listen
            || old.config.metrics.as_ref().map(|m| m.listen)
                != config.metrics.as_ref().map(|m| m.listen)
        {
            tracing::warn!("listener addresses changed; they take effect after a restart");
        }
        let settings = ConnSettings::from(&config);
        let tls = config.tls.clone();
        let policy_dir = config
            .policy
            .as_ref()
            .filter(|p| p.watch)
            .map(|p| p.dir.clone());
        if old.config.redis.as_ref().map(|r| (&r.url, &r.prefix))
            != config.redis.as_ref().map(|r| (&r.url, &r.prefix))
            || old.config.webhooks.as_ref().map(|w| &w.store)
                != config.webhooks.as_ref().map(|w| &w.store)
        {
            tracing::warn!(
                "[redis] or the webhook store changed; they take effect after a restart"
            );
        }
        let revocations = old.identity.revocations.clone();
        match Runtime::build(config, &metrics, &revocations) {
            Ok(rt) => {
                let summary = format!(
                    "configuration reloaded from {} ({} routes); {}",
                    path.display(),
                    rt.config.routes.len(),
                    policy_summary("policy", &rt.policy.current())
                );
                self.gateway.install(rt);
                self.settings.store(Arc::new(settings));
                self.tls = tls;
                self.policy_dir = policy_dir;
                metrics.config_reloaded(true);
                tracing::info!(path = %path.display(), "configuration reloaded");
                self.gateway
                    .audit
                    .submit(Record::event(Kind::ConfigReload, summary));
                true
            }
            Err(e) => {
                for line in e.to_string().lines() {
                    tracing::error!(
                        problem = line,
                        "configuration reload failed; the running configuration stays"
                    );
                }
                metrics.config_reloaded(false);
                self.audit_config_failure(path, &e.to_string());
                false
            }
        }
    }

    fn audit_config_failure(&self, path: &Path, error: &str) {
        self.gateway.audit.submit(Record::event(
            Kind::ConfigReload,
            format!(
                "configuration reload from {} failed; the running configuration stays: {error}",
                path.display()
            ),
        ));
    }

    fn reload_certificate(&self) {
        let (Some(resolver), Some(tls)) = (&self.resolver, &self.tls) else {
            return;
        };
        let metrics = &self.gateway.metrics;
        match resolver.reload(&tls.cert_file, &tls.key_file) {
            Ok(()) => {
                metrics.certificate_reloaded(true);
                tracing::info!(cert = %tls.cert_file.display(), "certificate reloaded");
            }
            Err(e) => {
                metrics.certificate_reloaded(false);
                tracing::error!(error = %e, "certificate reload failed; the previous certificate stays in use");
            }
        }
    }
}

/// Watches the directories holding the config and certificate files (editors and cert tools
/// replace files by rename, which a watch on the file itself would miss).
struct FileWatch {
    tx: mpsc::UnboundedSender<Trigger>,
    watcher: Option<notify::RecommendedWatcher>,
}

impl FileWatch {
    fn new(tx: mpsc::UnboundedSender<Trigger>) -> Self {
        FileWatch { tx, watcher: None }
    }

    fn update(&mut self, config: &Path, tls: Option<&TlsConfig>, policy_dir: Option<&Path>) {
        let mut files: Vec<(PathBuf, Trigger)> = vec![(config.to_path_buf(), Trigger::ConfigFile)];
        if let Some(t) = tls.filter(|t| t.watch) {
            for p in [&t.cert_file, &t.key_file] {
                if let Ok(abs) = std::path::absolute(p) {
                    files.push((abs, Trigger::CertFile));
                }
            }
        }
        let policy_dir = policy_dir.and_then(|d| std::path::absolute(d).ok());
        let tx = self.tx.clone();
        let wanted = files.clone();
        let policy_watch = policy_dir.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            if event.kind.is_access() {
                return;
            }
            for path in &event.paths {
                let is_policy = policy_watch
                    .as_deref()
                    .is_some_and(|d| path.parent() == Some(d))
                    && matches!(
                        path.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml")
                    );
                if is_policy {
                    let _ = tx.send(Trigger::PolicyFile);
                }
                for (file, trigger) in &wanted {
                    if path == file {
                        let _ = tx.send(*trigger);
                    }
                }
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files; reload with SIGHUP");
                return;
            }
        };
        let mut dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|(f, _)| f.parent().map(Path::to_path_buf))
            .collect();
        dirs.extend(policy_dir);
        for dir in dirs {
            if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; reload with SIGHUP");
            }
        }
        self.watcher = Some(watcher);
    }
}
