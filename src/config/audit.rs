//! The `[audit]` section: where the audit log goes and how hard it tries to keep it.

use std::path::PathBuf;
use std::time::Duration;

use super::Validator;
use super::file::{FileAudit, FileFsync};
use crate::audit::{FsyncPolicy, WriterConfig};

pub mod defaults {
    use std::time::Duration;
    pub const BATCH_INTERVAL: Duration = Duration::from_millis(50);
    pub const BATCH_RECORDS: u64 = 1_000;
    pub const ROTATE_BYTES: u64 = 256 * 1024 * 1024;
    pub const ROTATE_INTERVAL: Duration = Duration::from_secs(24 * 3600);
    pub const CHECKPOINT_EVERY: u64 = 10_000;
    pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
    pub const QUEUE: u64 = 65_536;
    pub const ENQUEUE_TIMEOUT: Duration = Duration::from_millis(200);
}

/// What a route does when its record cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditRequirement {
    /// Nothing is forwarded until its record is written; 503 otherwise (the default).
    Required,
    /// Forward anyway; the record is kept in memory and written when the log works again.
    BestEffort,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    /// Names this gateway's chain; replicas sharing a directory keep separate chains.
    pub replica: String,
    pub fsync: FsyncPolicy,
    pub rotate_bytes: u64,
    pub rotate_interval: Duration,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    pub signing_key_file: Option<PathBuf>,
    pub checkpoint_mirror_dir: Option<PathBuf>,
    pub queue: usize,
    pub enqueue_timeout: Duration,
}

impl AuditConfig {
    pub fn writer(&self) -> WriterConfig {
        WriterConfig {
            dir: self.dir.clone(),
            replica: self.replica.clone(),
            fsync: self.fsync,
            rotate_bytes: self.rotate_bytes,
            rotate_interval: self.rotate_interval,
            checkpoint_every: self.checkpoint_every,
            checkpoint_interval: self.checkpoint_interval,
            signing_key: self.signing_key_file.clone(),
            mirror: self.checkpoint_mirror_dir.clone(),
            queue: self.queue,
            enqueue_timeout: self.enqueue_timeout,
        }
    }
}

/// The host name, for the default replica name.
fn host_name() -> String {
    let from_file = std::fs::read_to_string("/etc/hostname").ok();
    let name = from_file
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let clean: String = name
        .trim()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.')
        .collect();
    if clean.is_empty() {
        "gatehouse".to_string()
    } else {
        clean
    }
}

fn valid_replica(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
}

impl Validator<'_> {
    pub(super) fn audit(&mut self, file: Option<&FileAudit>) -> Option<AuditConfig> {
        let Some(a) = file else {
            self.report_unplaced(
                "audit",
                "no [audit] section: every decision must be recorded; add [audit] with dir = \"<directory>\"",
            );
            return None;
        };
        let replica = match &a.replica {
            Some(r) => {
                if !valid_replica(r.get_ref()) {
                    self.report(
                        r,
                        "audit.replica",
                        format!(
                            "{:?}: use 1 to 64 lower-case letters, digits, '-', '_' and '.'",
                            r.get_ref()
                        ),
                    );
                }
                r.get_ref().clone()
            }
            None => host_name(),
        };
        let fsync = match a.fsync.as_ref().map(|f| *f.get_ref()) {
            Some(FileFsync::Always) => FsyncPolicy::Always,
            Some(FileFsync::Never) => FsyncPolicy::Never,
            None | Some(FileFsync::Batch) => FsyncPolicy::Batch {
                interval: self.duration(
                    &a.batch_interval,
                    "audit.batch_interval",
                    defaults::BATCH_INTERVAL,
                ),
                records: self.count(
                    &a.batch_records,
                    "audit.batch_records",
                    1_000_000,
                    defaults::BATCH_RECORDS,
                ),
            },
        };
        if !matches!(fsync, FsyncPolicy::Batch { .. }) {
            if let Some(v) = &a.batch_interval {
                self.report(
                    v,
                    "audit.batch_interval",
                    "only applies with fsync = \"batch\"",
                );
            }
            if let Some(v) = &a.batch_records {
                self.report(
                    v,
                    "audit.batch_records",
                    "only applies with fsync = \"batch\"",
                );
            }
        }
        let rotate_bytes = self.size(&a.rotate_size, "audit.rotate_size", defaults::ROTATE_BYTES);
        if let Some(v) = &a.rotate_size
            && rotate_bytes < 64 * 1024
        {
            self.report(v, "audit.rotate_size", "must be at least 64KiB");
        }
        Some(AuditConfig {
            dir: self.path(a.dir.get_ref()),
            replica,
            fsync,
            rotate_bytes,
            rotate_interval: self.duration(
                &a.rotate_interval,
                "audit.rotate_interval",
                defaults::ROTATE_INTERVAL,
            ),
            checkpoint_every: self.count(
                &a.checkpoint_every,
                "audit.checkpoint_every",
                100_000_000,
                defaults::CHECKPOINT_EVERY,
            ),
            checkpoint_interval: self.duration(
                &a.checkpoint_interval,
                "audit.checkpoint_interval",
                defaults::CHECKPOINT_INTERVAL,
            ),
            signing_key_file: a.signing_key_file.as_ref().map(|p| self.path(p.get_ref())),
            checkpoint_mirror_dir: a
                .checkpoint_mirror_dir
                .as_ref()
                .map(|p| self.path(p.get_ref())),
            queue: self.count(&a.queue, "audit.queue", 10_000_000, defaults::QUEUE) as usize,
            enqueue_timeout: self.duration(
                &a.enqueue_timeout,
                "audit.enqueue_timeout",
                defaults::ENQUEUE_TIMEOUT,
            ),
        })
    }
}
