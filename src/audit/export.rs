//! `gatehouse audit export`: the records of a time range, filtered, as CSV or JSON lines,
//! with the chain of everything read verified on the way.
//!
//! - Memory stays bounded whatever the log's size: files are read in chunks of whole lines.
//! - Files that end before `since` are not read (a file's records are all older than the next
//!   file's name stamp), but the last record of the last skipped file is read from its end so
//!   that the link into the first record read is still checked.
//! - Chunks are hashed, parsed, filtered and formatted on a pool of threads; one thread then
//!   checks the links (`prev`, `seq`, checkpoints) in order, merges replicas by time and writes.
//! - A broken chain does not stop the export: everything readable is exported, the first
//!   break of each replica is named in the [`Summary`], and [`Summary::chain_ok`] is false.
//!
//! Selection: every record is judged by its own fields (time, user, route, decision, kind);
//! an `outcome` is also exported when the request it completes was. In CSV the outcome of a
//! request is merged into the request's row when it arrives within [`PENDING_ROWS`] rows and
//! [`PENDING_AGE`] of record time; otherwise the request's row goes out without it and the
//! outcome gets a row of its own. See `docs/audit.md` for the columns.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::chain::{self, GENESIS, LineError};
use super::checkpoint::Checkpoint;
use super::files::{checkpoints_of, last_complete_line, log_files, replica_of, stamp_of};
use super::record::{Kind, parse_timestamp};
use super::verify::{Problem, read_checkpoints};

/// Longest line read; a longer one is not a record and stops the export.
pub const MAX_LINE: usize = 16 << 20;
/// Bytes read at a time from a log file (whole lines; a longer line makes a longer chunk).
const CHUNK: usize = 1 << 20;
/// Chunks of one replica read ahead of the writer.
const IN_FLIGHT: usize = 4;
/// CSV request rows kept waiting for their outcome, at most.
pub const PENDING_ROWS: usize = 100_000;
/// How long (in record time) a CSV request row waits for its outcome.
pub const PENDING_AGE: Duration = Duration::from_secs(15 * 60);
/// An outcome this long (in record time) after its request, or behind more than
/// [`AWAITED_MAX`] newer requests, is judged on its own fields. Files opened this long after
/// `until` are not read.
pub const HORIZON: Duration = Duration::from_secs(3600);
const AWAITED_MAX: usize = 1_000_000;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One row per record, outcomes merged into their request's row.
    Csv,
    /// The selected lines verbatim, so their hashes can be checked again.
    Jsonl,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "csv" => Ok(Format::Csv),
            "jsonl" => Ok(Format::Jsonl),
            other => Err(format!("{other:?}: expected csv or jsonl")),
        }
    }
}

/// Which records to export. Empty fields select everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// µs since the epoch, inclusive.
    pub since: Option<i64>,
    /// µs since the epoch, exclusive.
    pub until: Option<i64>,
    /// Identity username, email or subject (case-insensitive, exact).
    pub user: Option<String>,
    pub route: Option<String>,
    /// `decision.effect`: allow or deny.
    pub decision: Option<String>,
    /// Record kinds (any of them).
    pub kinds: Vec<Kind>,
}

/// Parses a time bound: RFC 3339 (any offset), or a date meaning midnight UTC.
pub fn parse_time(value: &str) -> Result<i64, String> {
    let v = value.trim();
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(v) {
        // Round up to the microsecond: records carry µs, `since` is inclusive and `until`
        // exclusive, so a bound between two µs behaves as the next one.
        let nanos = i64::from(dt.timestamp_subsec_nanos() % 1000);
        return Ok(dt.timestamp_micros() + i64::from(nanos > 0));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc().timestamp_micros());
    }
    Err(format!(
        "{value:?} is not a time: expected RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01, midnight UTC)"
    ))
}

impl Filter {
    /// Sets one criterion by name (`since`, `until`, `user`, `route`, `decision`, `kind`); the
    /// error says what is wrong with the value (the caller names the parameter). `kind` may be given several times or as a
    /// comma-separated list.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "since" => self.since = Some(parse_time(value)?),
            "until" => self.until = Some(parse_time(value)?),
            "user" => self.user = Some(nonempty(value)?.to_string()),
            "route" => self.route = Some(nonempty(value)?.to_string()),
            "decision" => match value {
                "allow" | "deny" => self.decision = Some(value.to_string()),
                other => return Err(format!("{other:?}: expected allow or deny")),
            },
            "kind" => {
                for k in value.split(',') {
                    let kind = Kind::parse(k.trim()).ok_or_else(|| {
                        format!(
                            "{k:?}: expected one of request, outcome, login, logout, login_failure, token_rejected, webhook, policy_reload, config_reload, admin"
                        )
                    })?;
                    if !self.kinds.contains(&kind) {
                        self.kinds.push(kind);
                    }
                }
            }
            other => return Err(format!("unknown criterion {other:?}")),
        }
        Ok(())
    }

    /// Checks that the criteria make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if let (Some(s), Some(u)) = (self.since, self.until)
            && s >= u
        {
            return Err("since must be before until".into());
        }
        Ok(())
    }

    /// Reads `since`, `until`, `user`, `route`, `decision`, `kind` and `format` from a URL
    /// query string (`since=2026-11-01&until=2026-11-02&format=csv`), percent-decoded.
    /// `since`, `until` and `format` are required, as on the command line: an export is
    /// always of a bounded range.
    pub fn from_query(query: &str) -> Result<(Filter, Format), String> {
        let mut filter = Filter::default();
        let mut format = None;
        let mut seen: Vec<String> = Vec::new();
        for pair in query.trim_start_matches('?').split('&') {
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(name).map_err(|e| format!("parameter name: {e}"))?;
            let value = percent_decode(value).map_err(|e| format!("{name}: {e}"))?;
            if name != "kind" && seen.contains(&name) {
                return Err(format!("{name}: given more than once"));
            }
            seen.push(name.clone());
            match name.as_str() {
                "format" => {
                    format = Some(
                        value
                            .parse::<Format>()
                            .map_err(|e| format!("format: {e}"))?,
                    );
                }
                "since" | "until" | "user" | "route" | "decision" | "kind" => {
                    filter
                        .set(&name, &value)
                        .map_err(|e| format!("{name}: {e}"))?;
                }
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}: expected since, until, user, route, decision, kind or format"
                    ));
                }
            }
        }
        if filter.since.is_none() {
            return Err("since is required (RFC 3339 time or YYYY-MM-DD)".into());
        }
        if filter.until.is_none() {
            return Err("until is required (RFC 3339 time or YYYY-MM-DD)".into());
        }
        let format = format.ok_or("format is required (csv or jsonl)")?;
        filter.validate()?;
        Ok((filter, format))
    }

    fn matches(&self, r: &Line<'_>, time: i64, kind: Option<Kind>) -> bool {
        if self.since.is_some_and(|s| time < s) || self.until.is_some_and(|u| time >= u) {
            return false;
        }
        if !self.kinds.is_empty() && !kind.is_some_and(|k| self.kinds.contains(&k)) {
            return false;
        }
        if let Some(route) = &self.route
            && r.route.as_ref().is_none_or(|v| v.0 != *route)
        {
            return false;
        }
        if let Some(d) = &self.decision
            && r.decision.as_ref().is_none_or(|v| v.effect.0 != *d)
        {
            return false;
        }
        if let Some(user) = &self.user {
            let Some(id) = &r.identity else {
                return false;
            };
            let same = |v: &str| {
                v.eq_ignore_ascii_case(user)
                    || (!(v.is_ascii() && user.is_ascii())
                        && v.to_lowercase() == user.to_lowercase())
            };
            if !(same(&id.subject.0)
                || id.username.as_ref().is_some_and(|v| same(&v.0))
                || id.email.as_ref().is_some_and(|v| same(&v.0)))
            {
                return false;
            }
        }
        true
    }
}

fn nonempty(value: &str) -> Result<&str, String> {
    if value.is_empty() {
        Err("empty value".into())
    } else {
        Ok(value)
    }
}

/// Decodes `%XX` escapes and `+` (a space in query strings); the result must be UTF-8.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape at byte {i} of {s:?}"))?;
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

/// How far an export has got, for a progress line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub records: u64,
    pub exported: u64,
    pub elapsed: Duration,
}

/// What one replica's chain looked like.
#[derive(Debug, Clone, Default)]
pub struct ReplicaSummary {
    pub name: String,
    /// Sequence numbers of the first and last records read.
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    /// The first break, if any, and how many problems were found in all.
    pub first_problem: Option<Problem>,
    pub problems: u64,
}

/// The outcome of an export; its `Display` is the one-line summary.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub exported: u64,
    /// Records read (and verified).
    pub records: u64,
    pub files: usize,
    /// Files not read because they end before `since` or begin after `until`.
    pub skipped_files: usize,
    pub checkpoints: usize,
    pub signatures_checked: bool,
    pub replicas: Vec<ReplicaSummary>,
    /// Things an auditor should know that are not breaks (a cut-short last write, a chain
    /// that starts after older files were removed).
    pub notes: Vec<String>,
}

impl Summary {
    /// Whether every record read verified, and every link and checkpoint held.
    pub fn chain_ok(&self) -> bool {
        self.replicas.iter().all(|r| r.problems == 0)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.replicas.iter().map(|r| r.name.as_str()).collect();
        write!(
            f,
            "exported {} of {} records from {} file{} (replica{} {})",
            self.exported,
            self.records,
            self.files,
            if self.files == 1 { "" } else { "s" },
            if names.len() == 1 { "" } else { "s" },
            names.join(", "),
        )?;
        if self.skipped_files > 0 {
            write!(
                f,
                ", {} file(s) outside the range skipped",
                self.skipped_files
            )?;
        }
        if self.chain_ok() {
            let ranges: Vec<String> = self
                .replicas
                .iter()
                .map(|r| match r.first_seq {
                    Some(first) => format!("records {first}..{} of {}", r.last_seq, r.name),
                    None => format!("no records of {}", r.name),
                })
                .collect();
            write!(f, "; chain verified: {}", ranges.join(", "))?;
        } else {
            let breaks: Vec<String> = self
                .replicas
                .iter()
                .filter_map(|r| {
                    let p = r.first_problem.as_ref()?;
                    let more = if r.problems > 1 {
                        format!(" (and {} more problem(s) in {})", r.problems - 1, r.name)
                    } else {
                        String::new()
                    };
                    Some(format!("{p}{more}"))
                })
                .collect();
            write!(f, "; chain BROKEN at {}", breaks.join("; and at "))?;
        }
        write!(
            f,
            "; {} checkpoint{} ({})",
            self.checkpoints,
            if self.checkpoints == 1 { "" } else { "s" },
            if self.signatures_checked {
                "signatures checked"
            } else {
                "signatures NOT checked: no public key"
            }
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("no audit files (audit-*.jsonl) in {0}")]
    NoFiles(String),
    #[error("{}: a line longer than {MAX_LINE} bytes after byte {offset}: not an audit record", path.display())]
    LineTooLong { path: PathBuf, offset: u64 },
    #[error("writing the export: {0}")]
    Write(std::io::Error),
    #[error("export worker stopped unexpectedly")]
    Worker,
}

/// Exports the records of `dirs` that `filter` selects to `out`, verifying the chain of
/// everything read (checkpoint signatures too when `public_key` is given). `progress` is
/// called as chunks are done. A broken chain is reported in the summary, not as an error.
pub fn export(
    dirs: &[PathBuf],
    filter: &Filter,
    format: Format,
    public_key: Option<&[u8]>,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary, ExportError> {
    let started = Instant::now();
    let mut summary = Summary {
        signatures_checked: public_key.is_some(),
        ..Default::default()
    };
    let plans = plan(dirs, filter, public_key, &mut summary)?;
    let bytes_total = plans
        .iter()
        .flat_map(|p| p.files.iter())
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);

    std::thread::scope(|scope| -> Result<Summary, ExportError> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        for _ in 0..workers {
            let jobs = jobs_rx.clone();
            scope.spawn(move || {
                loop {
                    let job = match jobs.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let done = process(job.chunk, filter, format);
                    let _ = job.done.send(Ok(done));
                }
            });
        }
        let mut streams = Vec::with_capacity(plans.len());
        for plan in plans {
            let (order_tx, order_rx) = mpsc::sync_channel(IN_FLIGHT);
            let (recycle_tx, recycle_rx) = mpsc::channel();
            let jobs = jobs_tx.clone();
            let files = plan.files.clone();
            scope.spawn(move || read_files(&files, &jobs, &order_tx, &recycle_rx));
            streams.push(Stream::new(plan, order_rx, recycle_tx));
        }
        drop(jobs_tx);

        let mut sink = Sink::new(format, out);
        let mut done = Progress {
            bytes_total,
            ..Default::default()
        };
        let mut heap = BinaryHeap::new();
        for (i, s) in streams.iter_mut().enumerate() {
            if s.advance(public_key, &mut summary, &mut done)? {
                heap.push(Reverse((s.head_time(), i)));
            }
        }
        // Each step takes the stream whose next record is oldest, and keeps taking from it
        // while it stays the oldest.
        while let Some(Reverse((_, i))) = heap.pop() {
            let s = &mut streams[i];
            loop {
                sink.take(s)?;
                s.idx += 1;
                if !s.advance(public_key, &mut summary, &mut done)? {
                    break;
                }
                if s.chunk_changed {
                    s.chunk_changed = false;
                    done.records = sink.records;
                    done.exported = sink.exported;
                    done.elapsed = started.elapsed();
                    progress(done);
                }
                let t = s.head_time();
                if heap.peek().is_some_and(|Reverse((other, _))| *other < t) {
                    heap.push(Reverse((t, i)));
                    break;
                }
            }
        }
        sink.finish()?;
        summary.notes.append(&mut sink.notes);
        done.records = sink.records;
        done.exported = sink.exported;
        done.elapsed = started.elapsed();
        progress(done);
        summary.records = sink.records;
        summary.exported = sink.exported;
        for s in streams {
            summary.replicas.push(s.summary);
        }
        Ok(summary)
    })
}

/// One replica's files to read and where its chain stands before the first of them.
struct Plan {
    name: String,
    files: Vec<PathBuf>,
    start: Option<Start>,
    problem: Option<Problem>,
}

/// The last record before the files read (in a skipped file).
struct Start {
    seq: u64,
    hash: [u8; 64],
}

/// Groups files by replica, decides which to skip, and reads the record each chain resumes
/// from.
fn plan(
    dirs: &[PathBuf],
    filter: &Filter,
    public_key: Option<&[u8]>,
    summary: &mut Summary,
) -> Result<Vec<Plan>, ExportError> {
    let mut by_replica: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
    for dir in dirs {
        if !dir.is_dir() {
            return Err(ExportError::NotADirectory(dir.clone()));
        }
        let files = log_files(dir, None).map_err(|source| ExportError::Read {
            path: dir.clone(),
            source,
        })?;
        for f in files {
            if let Some(r) = replica_of(&f) {
                by_replica.entry(r.to_string()).or_default().push(f);
            }
        }
    }
    if by_replica.is_empty() {
        let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(ExportError::NoFiles(names.join(", ")));
    }
    let horizon = HORIZON.as_micros() as i64;
    let mut plans = Vec::new();
    for (name, mut files) in by_replica {
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        // Skip file i when file i+1 was opened at or before `since`.
        let mut first = 0;
        if let Some(since) = filter.since {
            while first + 1 < files.len() && stamp_of(&files[first + 1]).is_some_and(|s| s <= since)
            {
                first += 1;
            }
        }
        // Skip files opened well after `until` (outcomes of earlier requests may still be in
        // the ones opened shortly after it).
        let mut last = files.len();
        if let Some(until) = filter.until {
            while last > first + 1
                && stamp_of(&files[last - 1]).is_some_and(|s| s >= until.saturating_add(horizon))
            {
                last -= 1;
            }
        }
        summary.skipped_files += first + (files.len() - last);
        let (start, problem) = if first > 0 {
            resume_from(&files[first - 1], public_key, &mut summary.checkpoints)
        } else {
            (None, None)
        };
        plans.push(Plan {
            name,
            files: files[first..last].to_vec(),
            start,
            problem,
        });
    }
    Ok(plans)
}

/// Reads the last record of a skipped file (from its end) and checks it against the file's
/// own checkpoints: a checkpoint beyond it means records were cut off.
fn resume_from(
    path: &Path,
    public_key: Option<&[u8]>,
    checkpoints: &mut usize,
) -> (Option<Start>, Option<Problem>) {
    let problem = |why: String| Problem {
        file: path.to_path_buf(),
        line: 0,
        why,
    };
    let line = match last_complete_line(path, MAX_LINE) {
        Ok(Some(l)) => l,
        Ok(None) => return (None, None),
        Err(e) => return (None, Some(problem(format!("reading its last record: {e}")))),
    };
    let link = match chain::check_line(&line) {
        Ok(l) => l,
        Err(e) => return (None, Some(problem(format!("its last record: {e}")))),
    };
    let mut hash = [0u8; 64];
    if link.hash.len() == 64 {
        hash.copy_from_slice(link.hash.as_bytes());
    }
    let start = Start {
        seq: link.seq,
        hash,
    };
    let cps = match read_checkpoints(&checkpoints_of(path), public_key) {
        Ok(c) => c,
        Err(p) => return (Some(start), Some(p)),
    };
    *checkpoints += cps.len();
    for cp in cps {
        if cp.seq > link.seq {
            return (
                Some(start),
                Some(problem(format!(
                    "record {} was signed in {} but the file ends at record {}: records were removed",
                    cp.seq,
                    checkpoints_of(path).display(),
                    link.seq
                ))),
            );
        }
        if cp.seq == link.seq && cp.hash != link.hash {
            return (
                Some(start),
                Some(problem(format!(
                    "its last record {} differs from the one signed in {}",
                    link.seq,
                    checkpoints_of(path).display()
                ))),
            );
        }
    }
    (Some(start), None)
}

/// Whole lines of one file.
struct Chunk {
    file: usize,
    data: Vec<u8>,
    /// A buffer for the worker's output.
    out: Vec<u8>,
    end_of_file: bool,
}

struct Job {
    chunk: Chunk,
    done: SyncSender<Result<Done, ExportError>>,
}

/// A chunk with what the workers found in each of its lines.
struct Done {
    chunk: Chunk,
    items: Vec<Item>,
    /// CSV cells the items point into.
    out: Vec<u8>,
}

/// Why a line is not a good record.
#[derive(Debug, Clone)]
enum Bad {
    Line(LineError),
    /// The last line of a file, without a newline: a write cut short.
    Partial,
}

#[derive(Debug, Clone, Copy, Default)]
struct Nums {
    status: Option<u16>,
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
    duration_us: Option<u64>,
}

/// One line, examined.
struct Item {
    line: std::ops::Range<usize>,
    bad: Option<Bad>,
    /// Whether the line parsed as a record (even if its hash is wrong).
    parsed: bool,
    time: i64,
    seq: u64,
    prev: [u8; 64],
    hash: [u8; 64],
    kind: Option<Kind>,
    id: u128,
    ref_id: Option<u128>,
    /// Chosen by the filter on its own fields.
    selected: bool,
    /// CSV: the row's cells before the outcome columns (each followed by a comma).
    prefix: std::ops::Range<usize>,
    /// CSV, outcomes: `outcome_time,outcome_id,outcome_detail` as cells.
    outcome_cells: std::ops::Range<usize>,
    nums: Nums,
}

/// Reads one replica's files in chunks of whole lines and hands them to the workers. Buffers
/// come back through `recycle` once written, so a long export does not keep asking the
/// allocator (and the kernel) for fresh pages.
fn read_files(
    files: &[PathBuf],
    jobs: &Sender<Job>,
    order: &SyncSender<Receiver<Result<Done, ExportError>>>,
    recycle: &Receiver<(Vec<u8>, Vec<u8>)>,
) {
    let send = |result: Result<Chunk, ExportError>| -> bool {
        let (tx, rx) = mpsc::sync_channel(1);
        match result {
            Ok(chunk) => {
                if jobs.send(Job { chunk, done: tx }).is_err() {
                    return false;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
        order.send(rx).is_ok()
    };
    for (file, path) in files.iter().enumerate() {
        let read_error = |source| ExportError::Read {
            path: path.clone(),
            source,
        };
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                send(Err(read_error(e)));
                return;
            }
        };
        let mut carry: Vec<u8> = Vec::new();
        let mut offset = 0u64;
        let mut eof = false;
        while !eof {
            let (mut data, out) = recycle.try_recv().unwrap_or_default();
            data.clear();
            data.reserve(carry.len() + CHUNK);
            data.extend_from_slice(&carry);
            // Up to CHUNK new bytes, read straight into the spare capacity.
            match (&mut f).take(CHUNK as u64).read_to_end(&mut data) {
                Ok(n) => eof = n < CHUNK,
                Err(e) => {
                    send(Err(read_error(e)));
                    return;
                }
            }
            carry.clear();
            if !eof {
                match data.iter().rposition(|b| *b == b'\n') {
                    Some(last) => {
                        carry.extend_from_slice(&data[last + 1..]);
                        data.truncate(last + 1);
                    }
                    None if data.len() > MAX_LINE => {
                        send(Err(ExportError::LineTooLong {
                            path: path.clone(),
                            offset,
                        }));
                        return;
                    }
                    None => {
                        carry = data;
                        continue;
                    }
                }
            }
            offset += data.len() as u64;
            let chunk = Chunk {
                file,
                data,
                out,
                end_of_file: eof,
            };
            if !send(Ok(chunk)) {
                return;
            }
        }
    }
}

/// A string field that borrows from the line unless it holds escapes.
#[derive(Deserialize, Default)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct LineIdentity<'a> {
    #[serde(borrow, default)]
    subject: Text<'a>,
    #[serde(borrow)]
    username: Option<Text<'a>>,
    #[serde(borrow)]
    email: Option<Text<'a>>,
    email_verified: Option<bool>,
    #[serde(borrow, default)]
    groups: Vec<Text<'a>>,
    #[serde(borrow, default)]
    method: Text<'a>,
    #[serde(borrow)]
    client_id: Option<Text<'a>>,
    #[serde(borrow)]
    issuer: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct LineSource<'a> {
    #[serde(borrow, default)]
    addr: Text<'a>,
    trusted_proxy: Option<bool>,
    #[serde(borrow)]
    forwarded_for: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct LineRef<'a> {
    #[serde(borrow, default)]
    name: Text<'a>,
    #[serde(borrow, default)]
    old: Text<'a>,
    #[serde(borrow, default)]
    new: Text<'a>,
}

#[derive(Deserialize)]
struct LineAction<'a> {
    #[serde(borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    repository: Option<Text<'a>>,
    #[serde(borrow, default)]
    refs: Vec<LineRef<'a>>,
    #[serde(borrow, default)]
    services: Vec<Text<'a>>,
}

#[derive(Deserialize)]
struct LineDecision<'a> {
    #[serde(borrow, default)]
    effect: Text<'a>,
    #[serde(borrow)]
    rule: Option<Text<'a>>,
    #[serde(borrow, default)]
    reasons: Vec<Text<'a>>,
}

/// A record as export reads it: borrowed, every field the CSV shows.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    time: Text<'a>,
    #[serde(borrow)]
    id: Text<'a>,
    seq: u64,
    #[serde(borrow, default)]
    replica: Text<'a>,
    #[serde(borrow)]
    kind: Text<'a>,
    #[serde(borrow)]
    request_id: Option<Text<'a>>,
    #[serde(borrow)]
    trace_id: Option<Text<'a>>,
    #[serde(borrow, rename = "ref")]
    ref_id: Option<Text<'a>>,
    #[serde(borrow)]
    identity: Option<LineIdentity<'a>>,
    #[serde(borrow)]
    source: Option<LineSource<'a>>,
    #[serde(borrow)]
    route: Option<Text<'a>>,
    #[serde(borrow)]
    method: Option<Text<'a>>,
    #[serde(borrow)]
    path: Option<Text<'a>>,
    #[serde(borrow)]
    action: Option<LineAction<'a>>,
    #[serde(borrow)]
    decision: Option<LineDecision<'a>>,
    status: Option<u16>,
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
    duration_us: Option<u64>,
    #[serde(borrow)]
    detail: Option<Text<'a>>,
    #[serde(borrow, default)]
    truncated: Vec<Text<'a>>,
    #[serde(borrow)]
    prev: Text<'a>,
    #[serde(borrow)]
    hash: Option<Text<'a>>,
}

/// Record ids are UUIDs; anything else is reduced to 128 bits of its SHA-256.
fn id_key(id: &str) -> u128 {
    if let Ok(u) = uuid::Uuid::try_parse(id) {
        return u.as_u128();
    }
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    u128::from_be_bytes(b)
}

fn hex64(s: &str) -> [u8; 64] {
    let mut out = [0u8; 64];
    if s.len() == 64 {
        out.copy_from_slice(s.as_bytes());
    }
    out
}

/// Position of the first `\n`, eight bytes at a time (lines are hundreds of bytes long).
fn find_newline(hay: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = ONES * b'\n' as u64;
    let mut words = hay.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_le_bytes(b) ^ NL;
        // A zero byte in `x` is a newline in `w`.
        if (x.wrapping_sub(ONES) & !x & HIGHS) != 0 {
            return w.iter().position(|c| *c == b'\n').map(|i| at + i);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|c| *c == b'\n')
        .map(|i| at + i)
}

/// The workers' part: hash, parse, select and format every line of a chunk.
fn process(mut chunk: Chunk, filter: &Filter, format: Format) -> Done {
    let mut out = std::mem::take(&mut chunk.out);
    out.clear();
    let data = &chunk.data;
    let mut items = Vec::with_capacity(data.len() / 400 + 1);
    if format == Format::Csv {
        out.reserve(data.len() + data.len() / 4);
    }
    let mut scratch = String::new();
    let mut start = 0;
    while start < data.len() {
        let (end, next, terminated) = match find_newline(&data[start..]) {
            Some(i) => (start + i, start + i + 1, true),
            None => (data.len(), data.len(), false),
        };
        items.push(examine(
            &data[start..end],
            start,
            terminated,
            filter,
            format,
            &mut out,
            &mut scratch,
        ));
        start = next;
    }
    Done { chunk, items, out }
}

fn examine(
    line: &[u8],
    offset: usize,
    terminated: bool,
    filter: &Filter,
    format: Format,
    out: &mut Vec<u8>,
    scratch: &mut String,
) -> Item {
    let mut item = Item {
        line: offset..offset + line.len(),
        bad: None,
        parsed: false,
        time: i64::MIN,
        seq: 0,
        prev: [0; 64],
        hash: [0; 64],
        kind: None,
        id: 0,
        ref_id: None,
        selected: false,
        prefix: 0..0,
        outcome_cells: 0..0,
        nums: Nums::default(),
    };
    if let Err(e) = chain::check_hash(line) {
        let give_up = !terminated || e == LineError::NoHash;
        item.bad = Some(if terminated {
            Bad::Line(e)
        } else {
            Bad::Partial
        });
        if give_up {
            return item;
        }
    }
    // One UTF-8 check for the whole line, so the parser need not check each string.
    let Ok(line) = std::str::from_utf8(line) else {
        item.bad = Some(Bad::Line(LineError::Json("not UTF-8".into())));
        return item;
    };
    let r: Line<'_> = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            item.bad = Some(Bad::Line(LineError::Json(e.to_string())));
            return item;
        }
    };
    let Some(time) = parse_timestamp(&r.time.0) else {
        item.bad = Some(Bad::Line(LineError::Json(format!(
            "time {:?} is not an RFC 3339 time",
            r.time.0
        ))));
        return item;
    };
    item.parsed = true;
    item.time = time;
    item.seq = r.seq;
    item.prev = hex64(&r.prev.0);
    item.hash = hex64(r.hash.as_ref().map_or("", |h| &h.0));
    item.kind = Kind::parse(&r.kind.0);
    item.selected = filter.matches(&r, time, item.kind);
    let is_outcome = item.kind == Some(Kind::Outcome);
    if item.selected && matches!(item.kind, Some(Kind::Request | Kind::Admin | Kind::Webhook)) {
        item.id = id_key(&r.id.0);
    }
    if is_outcome {
        item.ref_id = r.ref_id.as_ref().map(|v| id_key(&v.0));
    }
    item.nums = Nums {
        status: r.status,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        duration_us: r.duration_us,
    };
    if format == Format::Csv {
        if item.selected {
            let at = out.len();
            csv_prefix(&r, out, scratch);
            item.prefix = at..out.len();
        }
        if is_outcome {
            let at = out.len();
            cell(out, &r.time.0);
            cell(out, &r.id.0);
            cell(out, opt(&r.detail));
            out.pop();
            item.outcome_cells = at..out.len();
        }
    }
    item
}

/// The CSV columns, in order (see docs/audit.md for what each holds).
pub const CSV_COLUMNS: &[&str] = &[
    "time",
    "kind",
    "replica",
    "seq",
    "id",
    "ref",
    "request_id",
    "trace_id",
    "subject",
    "username",
    "email",
    "email_verified",
    "groups",
    "auth_method",
    "client_id",
    "issuer",
    "source_addr",
    "forwarded_for",
    "trusted_proxy",
    "route",
    "method",
    "path",
    "action",
    "repository",
    "refs",
    "services",
    "decision",
    "rule",
    "reasons",
    "detail",
    "truncated",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_us",
    "outcome_time",
    "outcome_id",
    "outcome_detail",
];

fn opt<'a>(v: &'a Option<Text<'_>>) -> &'a str {
    v.as_ref().map_or("", |t| &t.0)
}

fn flag(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "true",
        Some(false) => "false",
        None => "",
    }
}

/// Whether `hay` holds any of `set` (at most four bytes), eight bytes at a time with an early
/// exit: most cells are short and need no quoting, and this runs for every cell of every row.
#[inline]
fn contains_any(hay: &[u8], set: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut words = hay.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let w = u64::from_le_bytes(b);
        let mut hit = 0;
        for &c in set {
            // A zero byte in `x` is a byte equal to `c` in `w` (exact as a yes/no answer).
            let x = w ^ (ONES * u64::from(c));
            hit |= x.wrapping_sub(ONES) & !x & HIGHS;
        }
        if hit != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|c| set.contains(c))
}

/// Appends one CSV cell and a comma: RFC 4180 quoting, and a leading `'` when the value
/// starts with `=`, `+`, `-`, `@`, tab or CR, so no spreadsheet runs it as a formula.
fn cell(out: &mut Vec<u8>, v: &str) {
    let b = v.as_bytes();
    let formula = matches!(b.first(), Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r'));
    let quote = contains_any(b, b",\"\n\r");
    if quote {
        out.push(b'"');
    }
    if formula {
        out.push(b'\'');
    }
    if quote {
        for &c in b {
            if c == b'"' {
                out.push(b'"');
            }
            out.push(c);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(b);
    }
    out.push(b',');
}

/// Appends a list item to a `;`-joined cell value; `;` and `\` inside an item are escaped
/// with `\` so the list splits back exactly.
fn push_item(list: &mut String, item: &str) {
    if !list.is_empty() {
        list.push(';');
    }
    push_escaped(list, item);
}

fn push_escaped(list: &mut String, item: &str) {
    if contains_any(item.as_bytes(), b";\\") {
        for c in item.chars() {
            if c == ';' || c == '\\' {
                list.push('\\');
            }
            list.push(c);
        }
    } else {
        list.push_str(item);
    }
}

fn list_cell(out: &mut Vec<u8>, scratch: &mut String, items: &[Text<'_>]) {
    scratch.clear();
    for i in items {
        push_item(scratch, &i.0);
    }
    cell(out, scratch);
}

fn number(out: &mut Vec<u8>, n: Option<u64>) {
    if let Some(n) = n {
        super::record::json_u64(out, n);
    }
}

/// The cells of a record up to (not including) the outcome columns.
fn csv_prefix(r: &Line<'_>, out: &mut Vec<u8>, scratch: &mut String) {
    cell(out, &r.time.0);
    cell(out, &r.kind.0);
    cell(out, &r.replica.0);
    number(out, Some(r.seq));
    out.push(b',');
    cell(out, &r.id.0);
    cell(out, opt(&r.ref_id));
    cell(out, opt(&r.request_id));
    cell(out, opt(&r.trace_id));
    match &r.identity {
        Some(id) => {
            cell(out, &id.subject.0);
            cell(out, opt(&id.username));
            cell(out, opt(&id.email));
            cell(out, flag(id.email_verified));
            list_cell(out, scratch, &id.groups);
            cell(out, &id.method.0);
            cell(out, opt(&id.client_id));
            cell(out, opt(&id.issuer));
        }
        None => out.extend_from_slice(b",,,,,,,,"),
    }
    match &r.source {
        Some(s) => {
            cell(out, &s.addr.0);
            cell(out, opt(&s.forwarded_for));
            cell(out, flag(s.trusted_proxy));
        }
        None => out.extend_from_slice(b",,,"),
    }
    cell(out, opt(&r.route));
    cell(out, opt(&r.method));
    cell(out, opt(&r.path));
    match &r.action {
        Some(a) => {
            cell(out, opt(&a.kind));
            cell(out, opt(&a.repository));
            scratch.clear();
            for rf in &a.refs {
                push_item(scratch, &rf.name.0);
                scratch.push(' ');
                push_escaped(scratch, &rf.old.0);
                scratch.push_str("->");
                push_escaped(scratch, &rf.new.0);
            }
            cell(out, scratch);
            list_cell(out, scratch, &a.services);
        }
        None => out.extend_from_slice(b",,,,"),
    }
    match &r.decision {
        Some(d) => {
            cell(out, &d.effect.0);
            cell(out, opt(&d.rule));
            list_cell(out, scratch, &d.reasons);
        }
        None => out.extend_from_slice(b",,,"),
    }
    cell(out, opt(&r.detail));
    list_cell(out, scratch, &r.truncated);
}

/// The outcome columns and the end of the row.
fn csv_tail(out: &mut Vec<u8>, own: &Nums, outcome: Option<(&Nums, &[u8])>) {
    let o = outcome.map(|(n, _)| *n).unwrap_or_default();
    number(out, o.status.or(own.status).map(u64::from));
    out.push(b',');
    number(out, o.bytes_in.or(own.bytes_in));
    out.push(b',');
    number(out, o.bytes_out.or(own.bytes_out));
    out.push(b',');
    number(out, o.duration_us.or(own.duration_us));
    out.push(b',');
    match outcome {
        Some((_, cells)) => out.extend_from_slice(cells),
        None => out.extend_from_slice(b",,"),
    }
    out.extend_from_slice(b"\r\n");
}

/// One replica's chunks as the workers finish them, in order, and its chain state.
struct Stream {
    files: Vec<PathBuf>,
    results: Receiver<Receiver<Result<Done, ExportError>>>,
    recycle: Sender<(Vec<u8>, Vec<u8>)>,
    /// Lines of the current file before the current chunk.
    line_base: u64,
    cur: Option<Done>,
    idx: usize,
    chunk_changed: bool,
    file: Option<usize>,
    /// Checkpoints of the current file not yet matched: seq → (hash, where).
    wanted: HashMap<u64, ([u8; 64], PathBuf)>,
    started: bool,
    seq: u64,
    hash: [u8; 64],
    last_time: i64,
    summary: ReplicaSummary,
}

impl Stream {
    fn new(
        plan: Plan,
        results: Receiver<Receiver<Result<Done, ExportError>>>,
        recycle: Sender<(Vec<u8>, Vec<u8>)>,
    ) -> Stream {
        let mut s = Stream {
            files: plan.files,
            results,
            recycle,
            line_base: 0,
            cur: None,
            idx: 0,
            chunk_changed: false,
            file: None,
            wanted: HashMap::new(),
            started: false,
            seq: 0,
            hash: [0; 64],
            last_time: i64::MIN,
            summary: ReplicaSummary {
                name: plan.name,
                ..Default::default()
            },
        };
        if let Some(start) = plan.start {
            s.started = true;
            s.seq = start.seq;
            s.hash = start.hash;
        }
        if let Some(p) = plan.problem {
            s.problem(p);
        }
        s
    }

    fn problem(&mut self, p: Problem) {
        self.summary.problems += 1;
        if self.summary.first_problem.is_none() {
            self.summary.first_problem = Some(p);
        }
    }

    fn head_time(&self) -> i64 {
        match &self.cur {
            Some(d) if d.items[self.idx].parsed => d.items[self.idx].time,
            _ => self.last_time,
        }
    }

    /// Moves to the next item, fetching chunks and crossing files; false at the end.
    fn advance(
        &mut self,
        public_key: Option<&[u8]>,
        summary: &mut Summary,
        progress: &mut Progress,
    ) -> Result<bool, ExportError> {
        loop {
            if let Some(d) = &self.cur
                && self.idx < d.items.len()
            {
                return Ok(true);
            }
            if let Some(d) = self.cur.take() {
                self.line_base += d.items.len() as u64;
                if d.chunk.end_of_file {
                    self.end_file(d.chunk.file);
                }
                let _ = self.recycle.send((d.chunk.data, d.out));
            }
            let Ok(next) = self.results.recv() else {
                return Ok(false);
            };
            let done = next.recv().map_err(|_| ExportError::Worker)??;
            progress.bytes_done += done.chunk.data.len() as u64;
            if self.file != Some(done.chunk.file) {
                self.line_base = 0;
                self.begin_file(done.chunk.file, public_key, summary);
            }
            self.cur = Some(done);
            self.idx = 0;
            self.chunk_changed = true;
        }
    }

    fn begin_file(&mut self, file: usize, public_key: Option<&[u8]>, summary: &mut Summary) {
        self.file = Some(file);
        summary.files += 1;
        self.wanted.clear();
        let cp_path = checkpoints_of(&self.files[file]);
        match read_checkpoints(&cp_path, public_key) {
            Ok(list) => {
                summary.checkpoints += list.len();
                for Checkpoint { seq, hash, .. } in list {
                    self.wanted.insert(seq, (hex64(&hash), cp_path.clone()));
                }
            }
            Err(p) => self.problem(p),
        }
    }

    fn end_file(&mut self, file: usize) {
        if let Some(seq) = self.wanted.keys().min().copied() {
            let cp_path = self.wanted.remove(&seq).map(|(_, p)| p).unwrap_or_default();
            let p = Problem {
                file: self.files[file].clone(),
                line: 0,
                why: format!(
                    "record {seq} was signed in {} but is not in the file (it ends at record {}): records were removed",
                    cp_path.display(),
                    self.seq
                ),
            };
            self.problem(p);
        }
        self.wanted.clear();
    }

    /// Checks the current item's links; returns notes for the summary.
    fn check(&mut self, notes: &mut Vec<String>) {
        let Some(d) = &self.cur else { return };
        let line = self.line_base + self.idx as u64 + 1;
        let file = d.chunk.file;
        let it = &d.items[self.idx];
        let item = Checked {
            parsed: it.parsed,
            time: it.time,
            seq: it.seq,
            prev: it.prev,
            hash: it.hash,
            bad: it.bad.clone(),
        };
        let at = |why: String| Problem {
            file: self.files[file].clone(),
            line: line as usize,
            why,
        };
        if item.parsed {
            self.last_time = item.time;
        }
        let mut problem = None;
        match &item.bad {
            Some(Bad::Partial) => {
                notes.push(format!(
                    "{}:{line}: partial record at the end of the file (a write was cut short); the chain continues from the record before it",
                    self.files[file].display()
                ));
                return;
            }
            Some(Bad::Line(e)) => problem = Some(at(e.to_string())),
            None => {}
        }
        if problem.is_none() {
            if self.started {
                if item.prev != self.hash {
                    problem = Some(at(format!(
                        "does not follow record {} (a record before it was deleted, inserted, edited or reordered)",
                        self.seq
                    )));
                } else if item.seq != self.seq + 1 {
                    problem = Some(at(format!(
                        "sequence jumps from {} to {}",
                        self.seq, item.seq
                    )));
                }
            } else if self.summary.first_seq.is_none() && item.prev != *GENESIS.as_bytes() {
                notes.push(format!(
                    "{}: the chain starts at record {} in {} (older files were removed)",
                    self.summary.name,
                    item.seq,
                    self.files[file].display()
                ));
            }
        }
        if problem.is_none()
            && let Some((hash, cp_path)) = self.wanted.remove(&item.seq)
            && hash != item.hash
        {
            problem = Some(at(format!(
                "record {} differs from the one signed in {}",
                item.seq,
                cp_path.display()
            )));
        }
        let ok = problem.is_none();
        if let Some(p) = problem {
            self.problem(p);
        }
        if item.parsed {
            // Resynchronise on the record as written, so one bad record is one problem.
            self.started = true;
            self.seq = item.seq;
            self.hash = item.hash;
            if ok {
                self.summary.first_seq.get_or_insert(item.seq);
                self.summary.last_seq = item.seq;
            }
        } else {
            self.started = false;
        }
    }
}

/// The chain fields of an item, apart from its chunk.
struct Checked {
    parsed: bool,
    time: i64,
    seq: u64,
    prev: [u8; 64],
    hash: [u8; 64],
    bad: Option<Bad>,
}

/// A CSV row waiting for its request's outcome (or behind one that is). `text` is complete
/// (outcome columns and line end) unless `waiting`.
struct Row {
    time: i64,
    waiting: bool,
    text: Vec<u8>,
    own: Nums,
}

/// A row's cells so far, with room for the outcome columns.
fn row_text(prefix: &[u8]) -> Vec<u8> {
    let mut text = Vec::with_capacity(prefix.len() + 160);
    text.extend_from_slice(prefix);
    text
}

/// Selection across records (outcomes follow their requests) and output.
struct Sink<'a> {
    format: Format,
    out: BufWriter<&'a mut dyn Write>,
    header: bool,
    records: u64,
    exported: u64,
    newest: i64,
    /// Exported requests whose outcome has not been seen: id → absolute row number (CSV).
    awaited: HashMap<u128, u64>,
    awaited_order: VecDeque<(u128, i64)>,
    pending: VecDeque<Row>,
    /// Absolute number of `pending[0]`.
    head: u64,
    notes: Vec<String>,
    scratch: Vec<u8>,
}

impl<'a> Sink<'a> {
    fn new(format: Format, out: &'a mut dyn Write) -> Sink<'a> {
        Sink {
            format,
            out: BufWriter::with_capacity(1 << 18, out),
            header: false,
            records: 0,
            exported: 0,
            newest: i64::MIN,
            awaited: HashMap::new(),
            awaited_order: VecDeque::new(),
            pending: VecDeque::new(),
            head: 0,
            notes: Vec::new(),
            scratch: Vec::new(),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        self.out.write_all(bytes).map_err(ExportError::Write)
    }

    fn write_header(&mut self) -> Result<(), ExportError> {
        if self.format == Format::Csv && !self.header {
            self.header = true;
            let header = format!("{}\r\n", CSV_COLUMNS.join(","));
            self.write(header.as_bytes())?;
        }
        Ok(())
    }

    /// Verifies, selects and writes the stream's current item.
    fn take(&mut self, s: &mut Stream) -> Result<(), ExportError> {
        self.write_header()?;
        s.check(&mut self.notes);
        let Some(d) = &s.cur else { return Ok(()) };
        let item = &d.items[s.idx];
        if !item.parsed {
            return Ok(());
        }
        self.records += 1;
        self.newest = self.newest.max(item.time);
        let line = &d.chunk.data[item.line.clone()];
        if item.kind == Some(Kind::Outcome) {
            let awaited = item.ref_id.and_then(|r| self.awaited.remove(&r));
            match (awaited, self.format) {
                (Some(_), Format::Jsonl) => self.jsonl(line)?,
                (Some(row), Format::Csv) if row >= self.head => {
                    let cells = &d.out[item.outcome_cells.clone()];
                    if let Some(r) = self.pending.get_mut((row - self.head) as usize) {
                        csv_tail(&mut r.text, &r.own, Some((&item.nums, cells)));
                        r.waiting = false;
                        self.exported += 1;
                    }
                }
                (Some(_), Format::Csv) => {
                    // Its request's row already went out: the outcome gets its own row.
                    let prefix = if item.selected {
                        d.out[item.prefix.clone()].to_vec()
                    } else {
                        reformat(line)
                    };
                    self.row(item.time, false, &prefix, item.nums)?;
                }
                (None, Format::Jsonl) if item.selected => self.jsonl(line)?,
                (None, Format::Csv) if item.selected => {
                    let prefix = &d.out[item.prefix.clone()];
                    self.row_from(item.time, prefix, item.nums)?;
                }
                (None, _) => {}
            }
        } else if item.selected {
            // Records written before the status was known (a forwarded request, an export
            // over HTTPS) are completed by an outcome record.
            let is_request = matches!(item.kind, Some(Kind::Request | Kind::Admin | Kind::Webhook))
                && item.nums.status.is_none();
            if is_request {
                self.awaited
                    .insert(item.id, self.head + self.pending.len() as u64);
                self.awaited_order.push_back((item.id, item.time));
            }
            match self.format {
                Format::Jsonl => self.jsonl(line)?,
                Format::Csv if is_request => {
                    let prefix = &d.out[item.prefix.clone()];
                    self.row(item.time, true, prefix, item.nums)?;
                }
                Format::Csv => {
                    let prefix = &d.out[item.prefix.clone()];
                    self.row_from(item.time, prefix, item.nums)?;
                }
            }
        }
        self.expire()
    }

    fn jsonl(&mut self, line: &[u8]) -> Result<(), ExportError> {
        self.exported += 1;
        self.out.write_all(line).map_err(ExportError::Write)?;
        self.write(b"\n")
    }

    /// A complete row: written at once unless rows wait before it.
    fn row_from(&mut self, time: i64, prefix: &[u8], own: Nums) -> Result<(), ExportError> {
        self.exported += 1;
        if self.pending.is_empty() {
            self.out.write_all(prefix).map_err(ExportError::Write)?;
            self.scratch.clear();
            csv_tail(&mut self.scratch, &own, None);
            return self
                .out
                .write_all(&self.scratch)
                .map_err(ExportError::Write);
        }
        let mut text = row_text(prefix);
        csv_tail(&mut text, &own, None);
        self.pending.push_back(Row {
            time,
            waiting: false,
            text,
            own,
        });
        Ok(())
    }

    fn row(
        &mut self,
        time: i64,
        waiting: bool,
        prefix: &[u8],
        own: Nums,
    ) -> Result<(), ExportError> {
        if !waiting {
            return self.row_from(time, prefix, own);
        }
        self.exported += 1;
        self.pending.push_back(Row {
            time,
            waiting,
            text: row_text(prefix),
            own,
        });
        Ok(())
    }

    /// Writes rows from the head that are complete or have waited long enough, and forgets
    /// requests too old to expect their outcome.
    fn expire(&mut self) -> Result<(), ExportError> {
        let age = PENDING_AGE.as_micros() as i64;
        while let Some(front) = self.pending.front() {
            let due = !front.waiting
                || self.pending.len() > PENDING_ROWS
                || self.newest.saturating_sub(front.time) > age;
            if !due {
                break;
            }
            self.write_front()?;
        }
        // A request whose row still waits is younger than both limits, which are far larger
        // than the row's own.
        let horizon = HORIZON.as_micros() as i64;
        while let Some(&(id, time)) = self.awaited_order.front() {
            if self.awaited_order.len() <= AWAITED_MAX
                && self.newest.saturating_sub(time) <= horizon
            {
                break;
            }
            self.awaited_order.pop_front();
            self.awaited.remove(&id);
        }
        Ok(())
    }

    /// Writes the first pending row, without an outcome if it still waits for one.
    fn write_front(&mut self) -> Result<(), ExportError> {
        if let Some(mut row) = self.pending.pop_front() {
            self.head += 1;
            if row.waiting {
                csv_tail(&mut row.text, &row.own, None);
            }
            self.out.write_all(&row.text).map_err(ExportError::Write)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ExportError> {
        self.write_header()?;
        while !self.pending.is_empty() {
            self.write_front()?;
        }
        self.out.flush().map_err(ExportError::Write)
    }
}

/// The CSV cells of a line whose worker did not format them (rare: an outcome whose request's
/// row already went out).
fn reformat(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(r) = serde_json::from_slice::<Line<'_>>(line) {
        csv_prefix(&r, &mut out, &mut String::new());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_take_rfc3339_or_a_date() {
        assert_eq!(parse_time("2026-11-01"), Ok(1_793_491_200_000_000));
        assert_eq!(
            parse_time("2026-11-01T00:00:00Z"),
            Ok(1_793_491_200_000_000)
        );
        assert_eq!(
            parse_time("2026-11-01T01:00:00+01:00"),
            Ok(1_793_491_200_000_000)
        );
        // Between two microseconds: the next one.
        assert_eq!(
            parse_time("2026-11-01T00:00:00.0000001Z"),
            Ok(1_793_491_200_000_001)
        );
        let e = parse_time("01/11/2026").unwrap_err();
        assert!(e.contains("RFC 3339") && e.contains("2026-11-01"), "{e}");
    }

    #[test]
    fn queries_parse_with_precise_errors() {
        let (f, format) = Filter::from_query(
            "since=2026-11-01T00%3A00%3A00Z&until=2026-11-02&user=Alice%40example.com&route=gogs&decision=deny&kind=request,login&kind=outcome&format=jsonl",
        )
        .unwrap();
        assert_eq!(format, Format::Jsonl);
        assert_eq!(f.since, Some(1_793_491_200_000_000));
        assert_eq!(f.until, Some(1_793_491_200_000_000 + 86_400_000_000));
        assert_eq!(f.user.as_deref(), Some("Alice@example.com"));
        assert_eq!(f.route.as_deref(), Some("gogs"));
        assert_eq!(f.decision.as_deref(), Some("deny"));
        assert_eq!(f.kinds, [Kind::Request, Kind::Login, Kind::Outcome]);
        let (f, _) =
            Filter::from_query("?since=2026-11-01&until=2026-11-02&format=csv&user=a+b").unwrap();
        assert_eq!(f.user.as_deref(), Some("a b"));

        for (q, want) in [
            ("until=2026-11-02&format=csv", "since is required"),
            ("since=2026-11-01&format=csv", "until is required"),
            ("since=2026-11-01&until=2026-11-02", "format is required"),
            (
                "since=2026-11-02&until=2026-11-01&format=csv",
                "since must be before until",
            ),
            (
                "since=tomorrow&until=2026-11-02&format=csv",
                "since: \"tomorrow\" is not a time",
            ),
            (
                "since=2026-11-01&until=2026-11-02&format=xml",
                "format: \"xml\": expected csv or jsonl",
            ),
            (
                "since=2026-11-01&until=2026-11-02&format=csv&decision=permit",
                "decision: \"permit\": expected allow or deny",
            ),
            (
                "since=2026-11-01&until=2026-11-02&format=csv&kind=push",
                "kind: \"push\": expected one of",
            ),
            (
                "since=2026-11-01&until=2026-11-02&format=csv&users=x",
                "unknown parameter \"users\"",
            ),
            (
                "since=2026-11-01&since=2026-11-01&until=2026-11-02&format=csv",
                "since: given more than once",
            ),
            (
                "since=2026-11-01&until=2026-11-02&format=csv&user=",
                "user: empty value",
            ),
            (
                "since=2026-11-01&until=2026-11-02&format=csv&user=%ZZ",
                "user: bad percent escape",
            ),
            (
                "since=2026-11-01&until=2026-11-02&format=csv&user=%FF",
                "user: \"%FF\" does not decode to UTF-8",
            ),
        ] {
            let e = Filter::from_query(q).unwrap_err();
            assert!(e.contains(want), "{q}: {e}");
        }
    }

    fn cells(values: &[&str]) -> String {
        let mut out = Vec::new();
        for v in values {
            cell(&mut out, v);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_cells_are_quoted_per_rfc4180_and_never_formulas() {
        assert_eq!(cells(&["plain", ""]), "plain,,");
        assert_eq!(cells(&["a,b"]), "\"a,b\",");
        assert_eq!(cells(&["say \"hi\""]), "\"say \"\"hi\"\"\",");
        assert_eq!(cells(&["two\nlines"]), "\"two\nlines\",");
        assert_eq!(cells(&["=1+1"]), "'=1+1,");
        assert_eq!(cells(&["+1", "-1", "@x"]), "'+1,'-1,'@x,");
        assert_eq!(cells(&["\tx"]), "'\tx,");
        assert_eq!(cells(&["\rx"]), "\"'\rx\",");
        assert_eq!(cells(&["=a,b"]), "\"'=a,b\",");
        assert_eq!(cells(&["x=1"]), "x=1,");
    }

    #[test]
    fn byte_sets_are_found_in_every_position() {
        let set = b",\"\n\r";
        for len in 0..40 {
            for at in 0..=len {
                for &c in set.iter().chain(b"x") {
                    let mut v = vec![b'a'; len];
                    if at < len {
                        v[at] = c;
                    }
                    let want = at < len && c != b'x';
                    assert_eq!(contains_any(&v, set), want, "len {len} at {at} byte {c}");
                }
            }
        }
        // Bytes next to the set's values, and high bytes, are not in it.
        assert!(!contains_any(
            b"+-./\x0b\x0c\x0e\x21\x23\xe2\x80\xa8\xff\x80",
            set
        ));
        assert!(contains_any("é,".as_bytes(), set));
    }

    #[test]
    fn list_items_escape_the_separator() {
        let mut l = String::new();
        for i in ["a", "b;c", "d\\e", ""] {
            push_item(&mut l, i);
        }
        assert_eq!(l, "a;b\\;c;d\\\\e;");
    }

    #[test]
    fn newlines_are_found_in_every_position() {
        for len in 0..40 {
            for at in 0..=len {
                let mut v = vec![b'x'; len];
                if at < len {
                    v[at] = b'\n';
                }
                let want = (at < len).then_some(at);
                assert_eq!(find_newline(&v), want, "len {len} at {at}");
            }
        }
        assert_eq!(find_newline(b"\xff\xfe\n"), Some(2));
        assert_eq!(find_newline(b"\x0b\x09\x8a\x0a"), Some(3));
    }

    #[test]
    fn the_summary_line_says_what_was_verified() {
        let mut s = Summary {
            exported: 12,
            records: 40,
            files: 3,
            checkpoints: 4,
            signatures_checked: true,
            replicas: vec![
                ReplicaSummary {
                    name: "gw1".into(),
                    first_seq: Some(1),
                    last_seq: 30,
                    ..Default::default()
                },
                ReplicaSummary {
                    name: "gw2".into(),
                    first_seq: Some(5),
                    last_seq: 14,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert!(s.chain_ok());
        assert_eq!(
            s.to_string(),
            "exported 12 of 40 records from 3 files (replicas gw1, gw2); chain verified: records 1..30 of gw1, records 5..14 of gw2; 4 checkpoints (signatures checked)"
        );
        s.replicas[1].problems = 2;
        s.replicas[1].first_problem = Some(Problem {
            file: "/a/audit-x-gw2.jsonl".into(),
            line: 7,
            why: "does not follow record 10".into(),
        });
        assert!(!s.chain_ok());
        assert!(s.to_string().contains(
            "chain BROKEN at /a/audit-x-gw2.jsonl:7: does not follow record 10 (and 1 more problem(s) in gw2)"
        ));
    }
}
