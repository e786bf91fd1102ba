//! The audit log: every decision the gateway makes, one JSON line each, hash-chained,
//! checkpointed with Ed25519 signatures, verifiable and exportable.
//!
//! - [`record`]: what a line holds; [`chain`]: how lines are linked and sealed;
//! - [`checkpoint`]: signed positions; [`writer`]: the thread that owns the files;
//! - [`verify`] and [`export`]: what auditors run; [`files`]: how files are named.
//!
//! See `docs/audit.md` for the record schema, the CSV columns and what each fsync policy can
//! lose.

pub mod chain;
pub mod checkpoint;
pub mod export;
pub mod files;
pub mod record;
pub mod verify;
pub mod writer;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub use record::{Action, AuditDecision, AuditIdentity, AuditRef, Kind, Record, Source};
pub use writer::{AuditLog, FsyncPolicy, Refused, StartError, Unavailable, WriterConfig};

/// Audit metrics; counters touched per record are resolved once.
pub struct AuditMetrics {
    /// 1 while the last write succeeded.
    pub healthy: IntGauge,
    /// Requests refused because their record could not be queued or written.
    pub refused: IntCounter,
    /// Records that could not be written and were dropped (always also logged).
    pub lost: IntCounter,
    pub write_errors: IntCounter,
    pub mirror_errors: IntCounter,
    pub checkpoints: IntCounter,
    records: IntCounterVec,
    by_kind: Vec<(&'static str, IntCounter)>,
}

impl AuditMetrics {
    pub fn new(registry: &Registry) -> Result<AuditMetrics, prometheus::Error> {
        let m = AuditMetrics::unregistered()?;
        registry.register(Box::new(m.healthy.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        registry.register(Box::new(m.lost.clone()))?;
        registry.register(Box::new(m.write_errors.clone()))?;
        registry.register(Box::new(m.mirror_errors.clone()))?;
        registry.register(Box::new(m.checkpoints.clone()))?;
        registry.register(Box::new(m.records.clone()))?;
        Ok(m)
    }

    /// Metrics nobody scrapes (command-line tools, benchmarks).
    pub fn unregistered() -> Result<AuditMetrics, prometheus::Error> {
        let records = IntCounterVec::new(
            Opts::new(
                "gatehouse_audit_records_total",
                "Audit records written, by kind.",
            ),
            &["kind"],
        )?;
        let kinds = [
            Kind::Request,
            Kind::Outcome,
            Kind::Login,
            Kind::Logout,
            Kind::LoginFailure,
            Kind::TokenRejected,
            Kind::Webhook,
            Kind::PolicyReload,
            Kind::ConfigReload,
            Kind::Admin,
        ];
        Ok(AuditMetrics {
            healthy: IntGauge::new(
                "gatehouse_audit_healthy",
                "1 while the audit log is writable, 0 while writes fail.",
            )?,
            refused: IntCounter::new(
                "gatehouse_audit_refused_requests_total",
                "Requests answered 503 because their audit record could not be written.",
            )?,
            lost: IntCounter::new(
                "gatehouse_audit_records_lost_total",
                "Audit records dropped (queue or backlog full); each is also logged.",
            )?,
            write_errors: IntCounter::new(
                "gatehouse_audit_write_errors_total",
                "Failed writes to the audit log.",
            )?,
            mirror_errors: IntCounter::new(
                "gatehouse_audit_checkpoint_mirror_errors_total",
                "Failed writes of a checkpoint to the mirror directory.",
            )?,
            checkpoints: IntCounter::new(
                "gatehouse_audit_checkpoints_total",
                "Signed checkpoints written.",
            )?,
            by_kind: kinds
                .iter()
                .map(|k| (k.as_str(), records.with_label_values(&[k.as_str()])))
                .collect(),
            records,
        })
    }

    pub fn record(&self, kind: &str) {
        if let Some((_, c)) = self.by_kind.iter().find(|(k, _)| *k == kind) {
            c.inc();
        }
    }
}
