//! Audit file names: `audit-<UTC time>-<replica>.jsonl`, so names sort by time, with
//! `<name>.checkpoints` beside each.

use std::path::{Path, PathBuf};

/// The replica part of a log file name.
pub fn replica_of(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    stem.split_once('-').map(|(_, replica)| replica)
}

/// Log files in `dir` (of one replica, if given), oldest first.
pub fn log_files(dir: &Path, replica: Option<&str>) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && replica_of(p).is_some_and(|r| replica.is_none_or(|want| r == want))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The checkpoint file beside a log file.
pub fn checkpoints_of(log: &Path) -> PathBuf {
    let mut name = log
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".checkpoints");
    log.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_replica() {
        assert_eq!(
            replica_of(Path::new("/x/audit-20261126T120000123456Z-gw1.jsonl")),
            Some("gw1")
        );
        assert_eq!(
            replica_of(Path::new("/x/audit-20261126T120000123456Z-gw-a.jsonl")),
            Some("gw-a")
        );
        assert_eq!(replica_of(Path::new("/x/audit-x.jsonl.checkpoints")), None);
        assert_eq!(
            checkpoints_of(Path::new("/x/a.jsonl")),
            Path::new("/x/a.jsonl.checkpoints")
        );
    }
}
