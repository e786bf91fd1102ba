//! `gatehouse audit ...`: what operators and auditors run against the audit log.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::audit::checkpoint;
use crate::audit::verify::{self, Report};

#[derive(Debug, thiserror::Error)]
pub enum AuditCliError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Other(String),
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
