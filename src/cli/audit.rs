//! `gatehouse audit ...`: what operators and auditors run against the audit log.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::audit::checkpoint;
use crate::audit::export::{self, Filter, Format, Progress, Summary};
use crate::audit::verify::{self, Report};

#[derive(Debug, thiserror::Error)]
pub enum AuditCliError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Export(#[from] export::ExportError),
}

/// Writes a new Ed25519 signing key (PKCS#8 PEM, mode 0600) and its public half
/// (SubjectPublicKeyInfo PEM), which is what `verify --pubkey` takes.
pub fn keygen(out: &Path, public_out: &Path, force: bool) -> Result<(), AuditCliError> {
    for p in [out, public_out] {
        if p.exists() && !force {
            return Err(AuditCliError::File {
                path: p.to_path_buf(),
                message: "exists (pass --force to replace it)".into(),
            });
        }
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|e| AuditCliError::Key(e.to_string()))?;
    write_private(out, key.serialize_pem().as_bytes())?;
    std::fs::write(public_out, key.public_key_pem()).map_err(|e| AuditCliError::File {
        path: public_out.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuditCliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| AuditCliError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)
}

/// Runs `audit verify` and prints its report; returns whether everything verified.
pub fn verify(
    dirs: &[PathBuf],
    pubkey: Option<&Path>,
    mirror: Option<&Path>,
    out: &mut dyn Write,
) -> Result<bool, AuditCliError> {
    let public = match pubkey {
        Some(p) => Some(checkpoint::load_public_key(p).map_err(AuditCliError::Key)?),
        None => None,
    };
    for d in dirs {
        if !d.is_dir() {
            return Err(AuditCliError::File {
                path: d.clone(),
                message: "not a directory".into(),
            });
        }
    }
    let report = verify::verify(dirs, public.as_deref(), mirror)
        .map_err(|e| AuditCliError::Other(e.to_string()))?;
    print_report(&report, out).map_err(|e| AuditCliError::Other(e.to_string()))?;
    Ok(report.ok())
}

fn print_report(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    for note in &report.notes {
        writeln!(out, "note: {note}")?;
    }
    for p in &report.problems {
        writeln!(out, "FAILED: {p}")?;
    }
    let signatures = if report.signatures_checked {
        "signatures checked"
    } else {
        "signatures NOT checked"
    };
    writeln!(
        out,
        "{}: {} record{} in {} file{}, {} checkpoint{} ({signatures})",
        if report.ok() { "OK" } else { "FAILED" },
        report.records,
        if report.records == 1 { "" } else { "s" },
        report.files,
        if report.files == 1 { "" } else { "s" },
        report.checkpoints,
        if report.checkpoints == 1 { "" } else { "s" },
    )
}

/// The criteria of `audit export`, as given on the command line.
pub struct ExportArgs<'a> {
    pub since: &'a str,
    pub until: &'a str,
    pub user: Option<&'a str>,
    pub route: Option<&'a str>,
    pub decision: Option<&'a str>,
    pub kinds: &'a [String],
}

/// Builds the filter, naming the option a bad value came from.
pub fn export_filter(args: &ExportArgs<'_>) -> Result<Filter, AuditCliError> {
    let mut filter = Filter::default();
    let mut set = |name: &str, value: &str| {
        filter
            .set(name, value)
            .map_err(|e| AuditCliError::Other(format!("--{name}: {e}")))
    };
    set("since", args.since)?;
    set("until", args.until)?;
    for (name, value) in [
        ("user", args.user),
        ("route", args.route),
        ("decision", args.decision),
    ] {
        if let Some(v) = value {
            set(name, v)?;
        }
    }
    for k in args.kinds {
        set("kind", k)?;
    }
    filter
        .validate()
        .map_err(|_| AuditCliError::Other("--since must be before --until".into()))?;
    Ok(filter)
}

/// Runs `audit export` to `out` (a file, or standard output), with a progress line on
/// `stderr` when it is a terminal; prints notes and the summary line to `stderr`.
pub fn export(
    dirs: &[PathBuf],
    filter: &Filter,
    format: Format,
    out: Option<&Path>,
    pubkey: Option<&Path>,
) -> Result<Summary, AuditCliError> {
    let public = match pubkey {
        Some(p) => Some(checkpoint::load_public_key(p).map_err(AuditCliError::Key)?),
        None => None,
    };
    let mut stderr = std::io::stderr();
    let mut line = ProgressLine::new(stderr.is_terminal());
    let mut report = |p: Progress| line.show(&p);
    let summary = match out {
        Some(path) => {
            let mut file = std::fs::File::create(path).map_err(|e| AuditCliError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            let s = export::export(
                dirs,
                filter,
                format,
                public.as_deref(),
                &mut file,
                &mut report,
            )?;
            file.sync_all().map_err(|e| AuditCliError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            s
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            export::export(
                dirs,
                filter,
                format,
                public.as_deref(),
                &mut lock,
                &mut report,
            )?
        }
    };
    line.clear();
    for note in &summary.notes {
        let _ = writeln!(stderr, "note: {note}");
    }
    let _ = writeln!(stderr, "{summary}");
    Ok(summary)
}

/// A single self-overwriting progress line on a terminal, shown once an export has run
/// for a second; nothing at all when stderr is not a terminal.
struct ProgressLine {
    enabled: bool,
    shown: bool,
    last: Option<Instant>,
}

impl ProgressLine {
    fn new(enabled: bool) -> ProgressLine {
        ProgressLine {
            enabled,
            shown: false,
            last: None,
        }
    }

    fn show(&mut self, p: &Progress) {
        if !self.enabled || p.elapsed < Duration::from_secs(1) {
            return;
        }
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(Instant::now());
        let _ = write!(std::io::stderr(), "\r{}\x1b[K", progress_text(p));
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.shown = false;
        }
    }
}

/// `1.2/10.0 GiB  1,234,567 records/s  ETA 0:42`
pub fn progress_text(p: &Progress) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    let secs = p.elapsed.as_secs_f64().max(1e-3);
    let rate = p.records as f64 / secs;
    let bytes_rate = p.bytes_done as f64 / secs;
    let eta = if bytes_rate > 0.0 {
        let left = p.bytes_total.saturating_sub(p.bytes_done) as f64 / bytes_rate;
        let left = left.round() as u64;
        format!("{}:{:02}", left / 60, left % 60)
    } else {
        "?".into()
    };
    format!(
        "{:.1}/{:.1} GiB  {} records/s  ETA {eta}",
        p.bytes_done as f64 / GIB,
        p.bytes_total as f64 / GIB,
        rate.round() as u64
    )
}
