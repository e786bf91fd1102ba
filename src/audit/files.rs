//! Audit file names: `audit-<UTC time>-<replica>.jsonl`, so names sort by time, with
//! `<name>.checkpoints` beside each.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
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

/// When a log file was opened (µs since the epoch), from its name. Every record in a file was
/// written before the next file of its replica was opened, so it is older than that file's
/// stamp.
pub fn stamp_of(path: &Path) -> Option<i64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_prefix("audit-")?;
    let (stamp, _) = stem.split_once('-')?;
    // 20261126T120000123456Z
    let b = stamp.as_bytes();
    if b.len() != 22 || b[8] != b'T' || b[21] != b'Z' {
        return None;
    }
    let n = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    super::record::civil_micros(
        n(0, 4)?,
        n(4, 6)?,
        n(6, 8)?,
        n(9, 11)?,
        n(11, 13)?,
        n(13, 15)?,
        n(15, 21)?,
    )
}

/// The last newline-terminated line of a file (without its newline), read backwards from the
/// end so that a large file costs no more than its last record. Bytes after the last newline
/// (a write cut short) are ignored. `None` when the file holds no complete line; an error
/// when the line is longer than `max` bytes.
pub fn last_complete_line(path: &Path, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    const STEP: u64 = 64 * 1024;
    let mut f = File::open(path)?;
    let len = f.seek(SeekFrom::End(0))?;
    // `tail` holds the file's bytes from `start` to the end.
    let mut tail: Vec<u8> = Vec::new();
    let mut start = len;
    let mut end_of_line: Option<usize> = None;
    loop {
        if let Some(end) = end_of_line {
            if let Some(begin) = tail[..end].iter().rposition(|b| *b == b'\n') {
                return Ok(Some(tail[begin + 1..end].to_vec()));
            }
            if start == 0 {
                return Ok(Some(tail[..end].to_vec()));
            }
            if end > max {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the last line is longer than {max} bytes"),
                ));
            }
        } else if let Some(end) = tail.iter().rposition(|b| *b == b'\n') {
            end_of_line = Some(end);
            continue;
        } else if start == 0 {
            return Ok(None);
        } else if tail.len() > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("more than {max} bytes after the last newline"),
            ));
        }
        let step = STEP.min(start);
        start -= step;
        let mut block = vec![0u8; step as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut block)?;
        let shift = block.len();
        block.extend_from_slice(&tail);
        tail = block;
        end_of_line = end_of_line.map(|e| e + shift);
    }
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

    #[test]
    fn stamps_come_from_names() {
        assert_eq!(
            stamp_of(Path::new("/x/audit-20231114T221320123456Z-gw-a.jsonl")),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(stamp_of(Path::new("/x/audit-2023-gw.jsonl")), None);
    }

    #[test]
    fn the_last_complete_line_is_found_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let long = "x".repeat(200_000);
        for (text, want) in [
            ("".to_string(), None),
            ("partial".to_string(), None),
            ("a\n".to_string(), Some("a".to_string())),
            ("a\nb\n".to_string(), Some("b".to_string())),
            ("a\nb\ncut sh".to_string(), Some("b".to_string())),
            (format!("a\n{long}\n"), Some(long.clone())),
            (format!("{long}\n{long}"), Some(long.clone())),
            ("\n".to_string(), Some(String::new())),
        ] {
            std::fs::write(&p, &text).unwrap();
            let got = last_complete_line(&p, 1 << 20)
                .unwrap()
                .map(|l| String::from_utf8(l).unwrap());
            assert_eq!(got, want, "{:?}", &text[..text.len().min(20)]);
        }
        std::fs::write(&p, format!("{long}\n")).unwrap();
        assert!(last_complete_line(&p, 1000).is_err());
    }
}
