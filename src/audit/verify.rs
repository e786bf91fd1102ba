//! `gatehouse audit verify`: every file, every chain link, every checkpoint.
//!
//! Each replica's files form one chain. A record must hash to its own `hash`, name the
//! previous record's hash as `prev`, and carry the next sequence number; a checkpoint must be
//! signed by the key given and name a record that exists with that hash. The first failure
//! is reported with its file, line and reason. A file's last line cut short by a crash (no
//! newline, and not a complete record) is reported as a partial tail and is not a failure: the
//! writer resumes the chain from the record before it, in a new file. Records after the last
//! checkpoint are reported as not yet covered by a signature. Checkpoints in the mirror for
//! files newer than the newest file present mean that newest files were removed.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::chain::{self, GENESIS};
use super::checkpoint::{self, Checkpoint};
use super::files::{checkpoints_of, log_files, replica_of};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is about the file as a whole.
    pub line: usize,
    pub why: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.why)
        } else {
            write!(f, "{}: {}", self.file.display(), self.why)
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub records: u64,
    pub checkpoints: usize,
    pub signatures_checked: bool,
    /// The first failure of each chain (verification of a chain stops there).
    pub problems: Vec<Problem>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies every replica's chain across `dirs`; `public` checks checkpoint signatures;
/// `mirror` is the second checkpoint location, if checkpoints are copied there.
pub fn verify(
    dirs: &[PathBuf],
    public: Option<&[u8]>,
    mirror: Option<&Path>,
) -> std::io::Result<Report> {
    let mut report = Report {
        signatures_checked: public.is_some(),
        ..Default::default()
    };
    let mut by_replica: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for dir in dirs {
        for f in log_files(dir, None)? {
            if let Some(r) = replica_of(&f) {
                by_replica.entry(r.to_string()).or_default().push(f.clone());
            }
        }
    }
    if by_replica.is_empty() {
        report.notes.push("no audit files found".into());
    }
    for (replica, mut files) in by_replica {
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        verify_chain(&replica, &files, public, mirror, &mut report)?;
        if let Some(m) = mirror {
            missing_newest(&replica, &files, m, public, &mut report)?;
        }
    }
    if public.is_none() {
        report
            .notes
            .push("checkpoint signatures were not checked (give --pubkey)".into());
    }
    Ok(report)
}

struct Position {
    seq: u64,
    hash: String,
    started: bool,
}

fn verify_chain(
    replica: &str,
    files: &[PathBuf],
    public: Option<&[u8]>,
    mirror: Option<&Path>,
    report: &mut Report,
) -> std::io::Result<()> {
    let mut pos = Position {
        seq: 0,
        hash: GENESIS.to_string(),
        started: false,
    };
    let mut last_signed: Option<u64> = None;
    for (index, path) in files.iter().enumerate() {
        report.files += 1;
        // Checkpoints of this file, beside it and in the mirror.
        let mut wanted: HashMap<u64, (String, PathBuf)> = HashMap::new();
        let mut sources = vec![checkpoints_of(path)];
        if let (Some(m), Some(name)) = (mirror, path.file_name()) {
            sources.push(checkpoints_of(&m.join(name)));
        }
        for cp_path in &sources {
            match read_checkpoints(cp_path, public) {
                Ok(list) => {
                    for cp in list {
                        report.checkpoints += 1;
                        last_signed = Some(last_signed.map_or(cp.seq, |s| s.max(cp.seq)));
                        wanted.insert(cp.seq, (cp.hash, cp_path.clone()));
                    }
                }
                Err(problem) => {
                    report.problems.push(problem);
                    return Ok(());
                }
            }
        }
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut line_no = 0usize;
        let mut file_last_seq = pos.seq;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            line_no += 1;
            // Only a file's last line can lack its newline: a write cut short.
            let terminated = buf.last() == Some(&b'\n');
            let line = if terminated {
                &buf[..buf.len() - 1]
            } else {
                &buf[..]
            };
            let link = match chain::check_line(line) {
                Ok(l) => l,
                Err(_) if !terminated => {
                    let then = if index + 1 == files.len() {
                        "everything before it verifies"
                    } else {
                        "the chain continues from the record before it in the next file"
                    };
                    report.notes.push(format!(
                        "{}:{line_no}: partial record at the end (a write was cut short); {then}",
                        path.display()
                    ));
                    break;
                }
                Err(e) => {
                    report.problems.push(Problem {
                        file: path.clone(),
                        line: line_no,
                        why: format!("{e}"),
                    });
                    return Ok(());
                }
            };
            if pos.started {
                if link.prev != pos.hash {
                    report.problems.push(Problem {
                        file: path.clone(),
                        line: line_no,
                        why: format!("does not follow record {} (a record before it was deleted, inserted, edited or reordered)", pos.seq),
                    });
                    return Ok(());
                }
                if link.seq != pos.seq + 1 {
                    report.problems.push(Problem {
                        file: path.clone(),
                        line: line_no,
                        why: format!("sequence jumps from {} to {}", pos.seq, link.seq),
                    });
                    return Ok(());
                }
            } else if link.prev != GENESIS {
                report.notes.push(format!(
                    "{replica}: the chain starts at record {} in {} (older files were removed)",
                    link.seq,
                    path.display()
                ));
            }
            if let Some((hash, cp_path)) = wanted.remove(&link.seq)
                && hash != link.hash
            {
                report.problems.push(Problem {
                    file: path.clone(),
                    line: line_no,
                    why: format!(
                        "record {} differs from the one signed in {}",
                        link.seq,
                        cp_path.display()
                    ),
                });
                return Ok(());
            }
            pos = Position {
                seq: link.seq,
                hash: link.hash,
                started: true,
            };
            file_last_seq = link.seq;
            report.records += 1;
        }
        if let Some((seq, (_, cp_path))) = wanted.into_iter().min_by_key(|(s, _)| *s) {
            report.problems.push(Problem {
                file: path.clone(),
                line: 0,
                why: format!("record {seq} was signed in {} but is not in the file (it ends at record {file_last_seq}): records were removed", cp_path.display()),
            });
            return Ok(());
        }
    }
    match last_signed {
        Some(s) if pos.seq > s => report.notes.push(format!("{replica}: {} record(s) after the last checkpoint (record {s}) are not covered by a signature yet", pos.seq - s)),
        None if pos.seq > 0 => report.notes.push(format!("{replica}: no checkpoints found; the chain is intact but unsigned")),
        _ => {}
    }
    Ok(())
}

/// Checkpoints in the mirror for files of `replica` newer than its newest file: whole files
/// were removed from the end (what the checkpoints beside the log cannot show, since they
/// went with them).
fn missing_newest(
    replica: &str,
    files: &[PathBuf],
    mirror: &Path,
    public: Option<&[u8]>,
    report: &mut Report,
) -> std::io::Result<()> {
    let newest = files
        .last()
        .and_then(|f| f.file_name())
        .map(|n| n.to_os_string());
    let entries = match std::fs::read_dir(mirror) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut missing: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                return false;
            };
            let Some(log) = name.strip_suffix(".checkpoints") else {
                return false;
            };
            replica_of(Path::new(log)) == Some(replica)
                && newest
                    .as_ref()
                    .is_none_or(|n| std::ffi::OsStr::new(log) > n.as_os_str())
        })
        .collect();
    missing.sort();
    if let Some(cp_path) = missing.first() {
        let signed = match read_checkpoints(cp_path, public) {
            Ok(list) => list.iter().map(|c| c.seq).max(),
            Err(p) => {
                report.problems.push(p);
                return Ok(());
            }
        };
        let log = cp_path.with_extension("");
        report.problems.push(Problem {
            file: cp_path.clone(),
            line: 0,
            why: format!(
                "{} is missing although the mirror holds its checkpoints{}: the newest file(s) were removed",
                log.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                signed.map(|s| format!(" (up to record {s})")).unwrap_or_default(),
            ),
        });
    }
    Ok(())
}

/// Reads (and, with `public`, checks the signatures of) the checkpoints in `path`; a missing
/// file has none.
pub fn read_checkpoints(path: &Path, public: Option<&[u8]>) -> Result<Vec<Checkpoint>, Problem> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Problem {
                file: path.to_path_buf(),
                line: 0,
                why: e.to_string(),
            });
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match checkpoint::check(line, public) {
            Ok(cp) => out.push(cp),
            Err(e) => {
                return Err(Problem {
                    file: path.to_path_buf(),
                    line: i + 1,
                    why: format!("checkpoint: {e}"),
                });
            }
        }
    }
    Ok(out)
}
