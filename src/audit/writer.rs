//! The audit writer: one task (or thread) owns the files, takes records from a bounded queue in
//! batches (group commit), chains and writes them, syncs per the fsync policy, rotates, and
//! writes signed checkpoints.
//!
//! What each fsync policy can lose on power loss (a process crash loses nothing the kernel
//! accepted, under any policy):
//! - `always`: nothing that was acknowledged; a request waits for its record's fsync.
//! - `batch` (default): up to `batch_interval` (50 ms) or `batch_records` (1,000) records.
//! - `never`: whatever the operating system had not written back (seconds).
//!
//! When a write fails (disk full, permissions), the file is cut back to its last complete
//! record, requests that wait for their record are refused (the gateway answers 503 and
//! forwards nothing), records nobody waits for are kept in memory (bounded) and written when
//! the disk works again, and the writer keeps retrying every tick.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::AuditMetrics;
use super::chain::{self, GENESIS};
use super::checkpoint::{Checkpoint, Signer};
use super::record::{Record, timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    Always,
    Batch { interval: Duration, records: u64 },
    Never,
}

/// Writer settings (from `[audit]`).
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub dir: PathBuf,
    pub replica: String,
    pub fsync: FsyncPolicy,
    pub rotate_bytes: u64,
    pub rotate_interval: Duration,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    pub signing_key: Option<PathBuf>,
    pub mirror: Option<PathBuf>,
    pub queue: usize,
    /// How long a request may wait to enqueue its record before it is refused.
    pub enqueue_timeout: Duration,
}

/// Why a record could not be written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct Unavailable(pub String);

/// A record [`AuditLog::write`] could not write, handed back (when the writer still had it)
/// so the caller can record the refusal instead.
#[derive(Debug)]
pub struct Refused {
    pub why: Unavailable,
    pub record: Option<Box<Record>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}: {message}", dir.display())]
    Dir { dir: PathBuf, message: String },
    #[error("audit signing key: {0}")]
    Key(String),
}

type Ack = oneshot::Sender<Result<(), Refused>>;

enum Msg {
    Record(Box<Record>, Option<Ack>),
    Tick,
    Shutdown(oneshot::Sender<()>),
}

/// A handle to the writer; cheap to clone.
///
/// Two ways in: records someone waits for ([`AuditLog::write`]) go through a channel that
/// wakes the writer at once; records nobody waits for ([`AuditLog::submit`]: outcomes,
/// refusals, events) go into a queue the writer empties whenever it wakes, at the latest
/// every tick (5 ms). A request thus costs the writer one wake-up, not two, and an outcome
/// shares the write of the next request's record.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    background: std::sync::mpsc::SyncSender<Box<Record>>,
    healthy: Arc<AtomicBool>,
    metrics: Arc<AuditMetrics>,
    replica: Arc<str>,
    enqueue_timeout: Duration,
}

/// Most records kept in memory while the disk refuses writes.
const MAX_PENDING: usize = 100_000;
/// Most records written in one batch.
const MAX_BATCH: usize = 4096;
const TICK: Duration = Duration::from_millis(5);
/// How long a request waits for its record to be confirmed.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

impl AuditLog {
    /// Opens the directory, finds where the chain left off, and starts the writer.
    pub fn start(cfg: WriterConfig, metrics: Arc<AuditMetrics>) -> Result<AuditLog, StartError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| StartError::Dir {
            dir: cfg.dir.clone(),
            message: e.to_string(),
        })?;
        let signer = match &cfg.signing_key {
            Some(p) => Some(Signer::load(p).map_err(StartError::Key)?),
            None => None,
        };
        let (seq, prev) = recover(&cfg.dir, &cfg.replica).map_err(|message| StartError::Dir {
            dir: cfg.dir.clone(),
            message,
        })?;
        let (tx, rx) = mpsc::channel(cfg.queue.max(16));
        let (background, background_rx) = std::sync::mpsc::sync_channel(cfg.queue.max(16));
        let healthy = Arc::new(AtomicBool::new(true));
        metrics.healthy.set(1);
        let log = AuditLog {
            tx: tx.clone(),
            background,
            healthy: healthy.clone(),
            metrics: metrics.clone(),
            replica: Arc::from(cfg.replica.as_str()),
            enqueue_timeout: cfg.enqueue_timeout,
        };
        let checkpoint_failed = Arc::new(AtomicBool::new(false));
        let syncer = start_syncer(
            metrics.clone(),
            signer,
            cfg.mirror.clone(),
            checkpoint_failed.clone(),
        )?;
        let writer = Writer {
            cfg,
            file: None,
            file_name: String::new(),
            file_len: 0,
            file_opened: Instant::now(),
            seq,
            prev,
            since_checkpoint: 0,
            checkpointed_seq: seq,
            last_checkpoint: Instant::now(),
            unsynced: 0,
            last_sync: Instant::now(),
            pending: VecDeque::new(),
            buffer: Vec::new(),
            syncer,
            checkpoint_failed,
            healthy,
            metrics,
        };
        let thread_error = |what: &str, e: std::io::Error| StartError::Dir {
            dir: PathBuf::new(),
            message: format!("cannot start the {what} thread: {e}"),
        };
        match tokio::runtime::Handle::try_current() {
            // Ticks come from the runtime's timer.
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                rt.spawn(writer.run_async(rx, background_rx));
            }
            _ => {
                std::thread::Builder::new()
                    .name("audit-writer".into())
                    .spawn(move || writer.run(rx, background_rx))
                    .map_err(|e| thread_error("writer", e))?;
                // A ticker drives interval fsyncs, checkpoints and retries.
                std::thread::Builder::new()
                    .name("audit-ticker".into())
                    .spawn(move || {
                        while tx.blocking_send(Msg::Tick).is_ok() {
                            std::thread::sleep(TICK);
                        }
                    })
                    .map_err(|e| thread_error("ticker", e))?;
            }
        }
        Ok(log)
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether the last write succeeded (routes that require audit refuse work otherwise).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Writes a record and waits until it is written (and synced, with `fsync = "always"`).
    /// The record is boxed before the future is made, so the future (moved with every request
    /// that awaits it) stays small.
    pub fn write(
        &self,
        record: impl Into<Box<Record>>,
    ) -> impl std::future::Future<Output = Result<(), Refused>> + Send + '_ {
        let record = record.into();
        self.write_boxed(record)
    }

    async fn write_boxed(&self, record: Box<Record>) -> Result<(), Refused> {
        let refused = |why: &str, record: Option<Box<Record>>| Refused {
            why: Unavailable(why.to_string()),
            record,
        };
        let (ack, done) = oneshot::channel();
        // Room in the queue (the usual case) needs no timer.
        let msg = match self.tx.try_send(Msg::Record(record, Some(ack))) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => {
                Some(m)
            }
        };
        if let Some(msg) = msg
            && let Err(e) = self.tx.send_timeout(msg, self.enqueue_timeout).await
        {
            self.metrics.refused.inc();
            let record = match e.into_inner() {
                Msg::Record(r, _) => Some(r),
                _ => None,
            };
            return Err(refused("the audit queue is full", record));
        }
        let result = match tokio::time::timeout(ACK_TIMEOUT, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(refused("the audit writer stopped", None)),
            Err(_) => Err(refused("the audit writer did not confirm in time", None)),
        };
        if result.is_err() {
            self.metrics.refused.inc();
        }
        result
    }

    /// Hands a record to the writer without waiting for it to be written. If the queue stays
    /// full past the enqueue deadline, the loss is counted and logged, never silent.
    pub fn submit(&self, record: Record) {
        let record = match self.background.try_send(Box::new(record)) {
            Ok(()) => return,
            Err(std::sync::mpsc::TrySendError::Full(r)) => r,
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                self.metrics.lost.inc();
                tracing::error!("audit writer stopped: a record was lost");
                return;
            }
        };
        // The queue is full: wait for room in the main channel, as long as the deadline allows.
        match self.tx.try_send(Msg::Record(record, None)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = self.tx.clone();
                let metrics = self.metrics.clone();
                let timeout = self.enqueue_timeout.max(Duration::from_secs(5));
                let wait = async move {
                    if tx.send_timeout(msg, timeout).await.is_err() {
                        metrics.lost.inc();
                        tracing::error!("audit queue full: a record was lost");
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(wait);
                    }
                    // Outside the runtime (a body dropped at shutdown): wait here.
                    Err(_) => futures_block_on(wait),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.lost.inc();
                tracing::error!("audit writer stopped: a record was lost");
            }
        }
    }

    /// Writes what is queued, a final checkpoint, and syncs.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
        }
    }
}

/// Runs `f`, which may wait on the disk: as a writer task on a multi-threaded runtime, the
/// worker hands its other tasks on first (`block_in_place`), so an fsync stalls no request
/// that is not waiting for it.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Work for the syncer thread, done in the order it was handed over.
enum SyncJob {
    /// A batch-policy fsync.
    Sync(File),
    /// Sync the log file, then sign and append the checkpoint (and its mirror copy).
    Checkpoint(Box<CheckpointJob>),
    /// Answered when everything handed over before it is done.
    Barrier(std::sync::mpsc::SyncSender<()>),
}

/// A checkpoint naming the last record written before the job was handed over, which the
/// job's sync puts on disk before the checkpoint line refers to it.
struct CheckpointJob {
    log: File,
    cp: Checkpoint,
    /// `<log file>.checkpoints` in the log directory.
    path: PathBuf,
    /// The same file name, for the mirror directory.
    name: String,
}

/// Jobs waiting for the syncer at most: room for a batch sync and a checkpoint behind the
/// one running. A batch sync finding the queue full waits for the next batch or tick, a
/// checkpoint for the next record or tick.
const SYNC_QUEUE: usize = 2;

/// The thread that runs fsyncs and checkpoints, so that the writer never waits on the disk
/// (a checkpoint's sync took milliseconds, during which every request waiting for its record
/// waited too: bench/README.md).
fn start_syncer(
    metrics: Arc<AuditMetrics>,
    signer: Option<Signer>,
    mirror: Option<PathBuf>,
    checkpoint_failed: Arc<AtomicBool>,
) -> Result<std::sync::mpsc::SyncSender<SyncJob>, StartError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<SyncJob>(SYNC_QUEUE);
    std::thread::Builder::new()
        .name("audit-syncer".into())
        .spawn(move || {
            for job in rx {
                match job {
                    SyncJob::Sync(f) => {
                        if let Err(e) = sync_written(&f) {
                            metrics.write_errors.inc();
                            tracing::error!(error = %e, "audit log fsync failed");
                        }
                    }
                    SyncJob::Checkpoint(job) => {
                        let CheckpointJob {
                            log,
                            cp,
                            path,
                            name,
                        } = *job;
                        let ok = match sync_written(&log) {
                            Ok(()) => write_checkpoint(
                                cp,
                                &path,
                                &name,
                                signer.as_ref(),
                                mirror.as_ref(),
                                &metrics,
                            ),
                            Err(e) => {
                                tracing::error!(error = %e, "audit log fsync before a checkpoint failed");
                                false
                            }
                        };
                        if ok {
                            metrics.checkpoints.inc();
                        } else {
                            metrics.write_errors.inc();
                            checkpoint_failed.store(true, Ordering::Release);
                        }
                    }
                    SyncJob::Barrier(done) => {
                        let _ = done.send(());
                    }
                }
            }
        })
        .map_err(|e| StartError::Dir {
            dir: PathBuf::new(),
            message: format!("cannot start the syncer thread: {e}"),
        })?;
    Ok(tx)
}

/// [`sync_file`] for a handle that the writer may still be appending through: what was
/// written before the call is on disk after it.
fn sync_written(f: &File) -> std::io::Result<()> {
    sync_file(f, f.metadata().map_or(0, |m| m.len()))
}

/// Signs `cp` (when a key is configured) and appends it to `path` and to the mirror.
/// Whether the checkpoint beside the log was written.
fn write_checkpoint(
    cp: Checkpoint,
    path: &Path,
    name: &str,
    signer: Option<&Signer>,
    mirror: Option<&PathBuf>,
    metrics: &AuditMetrics,
) -> bool {
    let line = match signer {
        Some(s) => s.sign(cp),
        None => {
            let mut l = serde_json::to_vec(&cp).unwrap_or_default();
            l.push(b'\n');
            l
        }
    };
    let ok = match append_synced(path, &line) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot write the audit checkpoint");
            false
        }
    };
    if let Some(mirror) = mirror
        && let Err(e) = append_synced(&mirror.join(name), &line)
    {
        tracing::warn!(dir = %mirror.display(), error = %e, "cannot write the audit checkpoint mirror");
        metrics.mirror_errors.inc();
    }
    ok
}

/// Syncs a log file whose first `written` bytes were written before the call, then drops
/// those bytes' pages from the page cache. The log is written once and read rarely (verify,
/// export, recovery): kept cached, it would grow the page cache by all the gateway records and
/// push out pages that others need, and on a VM that hands free memory back to the host every
/// new page cache page costs a fault in the hypervisor (bench/README.md measured it). Only
/// what the sync covered: the kernel would start writing back dirty pages it was asked to
/// drop, and then wait on every core's page lists.
fn sync_file(f: &File, written: u64) -> std::io::Result<()> {
    f.sync_data()?;
    #[cfg(target_os = "linux")]
    if let Some(len) = std::num::NonZeroU64::new(written) {
        let _ = rustix::fs::fadvise(f, 0, Some(len), rustix::fs::Advice::DontNeed);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = written;
    Ok(())
}

/// Runs a future to completion on a throwaway current-thread runtime.
fn futures_block_on(f: impl std::future::Future<Output = ()>) {
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        rt.block_on(f);
    }
}

/// Finds the newest file of `replica` and the last complete record in it.
fn recover(dir: &Path, replica: &str) -> Result<(u64, String), String> {
    let files = super::files::log_files(dir, Some(replica)).map_err(|e| e.to_string())?;
    let Some(last) = files.last() else {
        return Ok((0, GENESIS.to_string()));
    };
    let f = File::open(last).map_err(|e| format!("{}: {e}", last.display()))?;
    let mut result = None;
    for line in std::io::BufReader::new(f).split(b'\n') {
        let line = line.map_err(|e| format!("{}: {e}", last.display()))?;
        if let Ok(link) = chain::check_line(&line) {
            result = Some((link.seq, link.hash));
        }
    }
    match result {
        Some(r) => Ok(r),
        // An empty newest file: look further back.
        None if files.len() > 1 => recover_before(&files[..files.len() - 1]),
        None => Ok((0, GENESIS.to_string())),
    }
}

fn recover_before(files: &[PathBuf]) -> Result<(u64, String), String> {
    for file in files.iter().rev() {
        let mut text = Vec::new();
        File::open(file)
            .and_then(|mut f| f.read_to_end(&mut text))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        if let Some(link) = text
            .split(|b| *b == b'\n')
            .rev()
            .find_map(|l| chain::check_line(l).ok())
        {
            return Ok((link.seq, link.hash));
        }
    }
    Ok((0, GENESIS.to_string()))
}

struct Writer {
    cfg: WriterConfig,
    file: Option<File>,
    file_name: String,
    file_len: u64,
    file_opened: Instant,
    seq: u64,
    prev: String,
    since_checkpoint: u64,
    checkpointed_seq: u64,
    last_checkpoint: Instant,
    unsynced: u64,
    last_sync: Instant,
    /// Records nobody waits for, kept while the disk refuses writes.
    pending: VecDeque<Box<Record>>,
    /// The batch being written, kept to reuse its allocation.
    buffer: Vec<u8>,
    /// Hands fsyncs and checkpoints to the syncer thread (off the writing path).
    syncer: std::sync::mpsc::SyncSender<SyncJob>,
    /// Set by the syncer when a checkpoint could not be written: the next one names the
    /// latest record again.
    checkpoint_failed: Arc<AtomicBool>,
    healthy: Arc<AtomicBool>,
    metrics: Arc<AuditMetrics>,
}

impl Writer {
    /// The writer on its own thread (outside a multi-threaded runtime: tools, tests).
    fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        background: std::sync::mpsc::Receiver<Box<Record>>,
    ) {
        // Set when the last look at the background queue left records behind: look again
        // at once instead of waiting for a wake-up.
        let mut more = false;
        loop {
            let first = if more {
                rx.try_recv().ok()
            } else {
                match rx.blocking_recv() {
                    Some(m) => Some(m),
                    None => break,
                }
            };
            match self.step(first, false, &mut rx, &background) {
                Some(m) => more = m,
                None => return,
            }
        }
        self.finish(&background);
    }

    /// The writer as a task of the gateway's runtime: handing it a record wakes a task on
    /// the same worker, not another thread, so a request costs no context switch. Its file
    /// writes go to the page cache; fsyncs run on the syncer thread.
    async fn run_async(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        background: std::sync::mpsc::Receiver<Box<Record>>,
    ) {
        // Ticks from the runtime's timer, not from a thread: no thread wakes the worker every
        // 5 ms. One that came due while a batch was written is taken at the next pass.
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut more = false;
        loop {
            let first = if more {
                tokio::task::yield_now().await;
                rx.try_recv().ok()
            } else {
                tokio::select! {
                    biased;
                    m = rx.recv() => match m {
                        Some(m) => {
                            // Group commit: let the other tasks that are ready run first, so
                            // their records join this batch and one write serves them all.
                            tokio::task::yield_now().await;
                            Some(m)
                        }
                        None => break,
                    },
                    _ = ticks.tick() => Some(Msg::Tick),
                }
            };
            // Records arriving without pause must not starve the tick.
            let due = std::future::poll_fn(|cx| Poll::Ready(ticks.poll_tick(cx).is_ready())).await;
            match self.step(first, due, &mut rx, &background) {
                Some(m) => more = m,
                None => return,
            }
        }
        self.finish(&background);
    }

    /// One batch: what is queued, then ticks (`due`: a tick not sent as a message) and
    /// shutdown. `None` once shut down; otherwise whether records were left behind in the
    /// background queue.
    fn step(
        &mut self,
        first: Option<Msg>,
        due: bool,
        rx: &mut mpsc::Receiver<Msg>,
        background: &std::sync::mpsc::Receiver<Box<Record>>,
    ) -> Option<bool> {
        let mut batch: Vec<Msg> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        // Records nobody waits for were handed over earlier: they go first.
        let mut records: Vec<(Box<Record>, Option<Ack>)> = Vec::with_capacity(batch.len());
        while records.len() < MAX_BATCH {
            match background.try_recv() {
                Ok(r) => records.push((r, None)),
                Err(_) => break,
            }
        }
        let more = records.len() == MAX_BATCH;
        let mut shutdown = None;
        let mut tick = due;
        for m in batch {
            match m {
                Msg::Record(r, ack) => records.push((r, ack)),
                Msg::Tick => tick = true,
                Msg::Shutdown(done) => shutdown = Some(done),
            }
        }
        if !self.pending.is_empty() {
            let retry: Vec<(Box<Record>, Option<Ack>)> =
                self.pending.drain(..).map(|r| (r, None)).collect();
            records.splice(0..0, retry);
        }
        if !records.is_empty() {
            self.append(records);
        }
        if tick {
            self.on_tick();
        }
        if let Some(done) = shutdown {
            self.finish(background);
            let _ = done.send(());
            return None;
        }
        Some(more)
    }

    /// Everything queued, a final checkpoint, a sync.
    fn finish(&mut self, background: &std::sync::mpsc::Receiver<Box<Record>>) {
        self.drain(background);
        self.checkpoint_and_wait("shutdown");
        self.sync();
    }

    /// Writes everything still queued (at shutdown).
    fn drain(&mut self, background: &std::sync::mpsc::Receiver<Box<Record>>) {
        loop {
            let records: Vec<(Box<Record>, Option<Ack>)> = background
                .try_iter()
                .take(MAX_BATCH)
                .map(|r| (r, None))
                .collect();
            if records.is_empty() {
                return;
            }
            self.append(records);
        }
    }

    fn file_path(&self, name: &str) -> PathBuf {
        self.cfg.dir.join(name)
    }

    /// Opens a new file (after checkpointing the current one).
    fn rotate(&mut self) -> std::io::Result<()> {
        off_runtime(|| self.rotate_now())
    }

    fn rotate_now(&mut self) -> std::io::Result<()> {
        if self.file.is_some() {
            self.checkpoint_and_wait("rotation");
            self.sync();
        }
        let stamp = timestamp(SystemTime::now())
            .replace([':', '-'], "")
            .replace('.', "");
        let name = format!("audit-{stamp}-{}.jsonl", self.cfg.replica);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file_path(&name))?;
        self.file_len = file.metadata()?.len();
        self.file = Some(file);
        self.file_name = name;
        self.file_opened = Instant::now();
        // The directory entry itself must survive a crash.
        if let Ok(d) = File::open(&self.cfg.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn needs_rotation(&self) -> bool {
        self.file.is_none()
            || self.file_len >= self.cfg.rotate_bytes
            || self.file_opened.elapsed() >= self.cfg.rotate_interval
    }

    fn append(&mut self, mut records: Vec<(Box<Record>, Option<Ack>)>) {
        if self.needs_rotation()
            && let Err(e) = self.rotate()
        {
            self.fail(records, &format!("cannot open a new audit file: {e}"));
            return;
        }
        let (seq0, prev0) = (self.seq, self.prev.clone());
        // The records are sealed in place (a failed batch is retried with new positions) into
        // a buffer kept across batches.
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        for (record, _) in records.iter_mut() {
            self.seq += 1;
            record.seq = self.seq;
            record.replica.clone_from(&self.cfg.replica);
            record.prev = std::mem::take(&mut self.prev);
            self.prev = chain::seal_into(record, &mut buffer);
        }
        let written = match self.file.as_mut() {
            Some(f) => f.write_all(&buffer).and_then(|()| {
                if self.cfg.fsync == FsyncPolicy::Always {
                    sync_file(f, self.file_len + buffer.len() as u64)
                } else {
                    Ok(())
                }
            }),
            None => Err(std::io::Error::other("no audit file open")),
        };
        if let Err(e) = written {
            // Cut the file back to its last complete record and forget the chain positions.
            if let Some(f) = self.file.as_mut() {
                let _ = f.set_len(self.file_len);
                let _ = f.seek(SeekFrom::End(0));
            }
            self.seq = seq0;
            self.prev = prev0;
            self.fail(records, &format!("writing {}: {e}", self.file_name));
            return;
        }
        self.file_len += buffer.len() as u64;
        self.buffer = buffer;
        let n = records.len() as u64;
        self.unsynced += n;
        self.since_checkpoint += n;
        if self.cfg.fsync == FsyncPolicy::Always {
            self.unsynced = 0;
            self.last_sync = Instant::now();
        }
        if let FsyncPolicy::Batch { records: limit, .. } = self.cfg.fsync
            && self.unsynced >= limit
        {
            self.sync_soon();
        }
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!("audit log writable again");
        }
        self.metrics.healthy.set(1);
        for (record, _) in &records {
            self.metrics.record(&record.kind);
        }
        for (_, ack) in records {
            if let Some(ack) = ack {
                let _ = ack.send(Ok(()));
            }
        }
        if self.since_checkpoint >= self.cfg.checkpoint_every {
            self.checkpoint("count");
        }
    }

    fn fail(&mut self, records: Vec<(Box<Record>, Option<Ack>)>, why: &str) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::error!(
                error = why,
                "audit log cannot be written; routes that require audit answer 503"
            );
        }
        self.metrics.healthy.set(0);
        self.metrics.write_errors.inc();
        for (record, ack) in records {
            match ack {
                // The request waiting for it is refused: nothing is forwarded unrecorded.
                Some(ack) => {
                    let _ = ack.send(Err(Refused {
                        why: Unavailable(why.to_string()),
                        record: Some(record),
                    }));
                }
                None => {
                    if self.pending.len() < MAX_PENDING {
                        self.pending.push_back(record);
                    } else {
                        self.metrics.lost.inc();
                        tracing::error!("audit record lost: the in-memory backlog is full");
                    }
                }
            }
        }
    }

    fn on_tick(&mut self) {
        if let FsyncPolicy::Batch { interval, .. } = self.cfg.fsync
            && self.unsynced > 0
            && self.last_sync.elapsed() >= interval
        {
            self.sync_soon();
        }
        if self.checkpoint_failed.swap(false, Ordering::AcqRel) {
            // A checkpoint the syncer could not write: the next one (count, interval,
            // rotation or shutdown) names the latest record even if none came since.
            self.checkpointed_seq = 0;
            self.since_checkpoint = self.since_checkpoint.max(1);
        }
        if self.since_checkpoint > 0
            && self.last_checkpoint.elapsed() >= self.cfg.checkpoint_interval
        {
            self.checkpoint("interval");
        }
        if self.file.is_some()
            && self.file_opened.elapsed() >= self.cfg.rotate_interval
            && self.seq > self.checkpointed_seq
        {
            let _ = self.rotate();
        }
    }

    /// A batch-policy sync, on the syncer thread so writing goes on meanwhile. If a sync is
    /// still running, this one waits for the next batch or tick.
    fn sync_soon(&mut self) {
        let Some(f) = &self.file else { return };
        match f.try_clone() {
            Ok(dup) => {
                if self.syncer.try_send(SyncJob::Sync(dup)).is_ok() {
                    self.unsynced = 0;
                    self.last_sync = Instant::now();
                }
            }
            Err(_) => self.sync(),
        }
    }

    /// Syncs the current file (checkpoints, rotation, shutdown, `fsync = "always"`).
    fn sync(&mut self) {
        off_runtime(|| self.sync_now())
    }

    fn sync_now(&mut self) {
        if let Some(f) = &self.file
            && sync_file(f, self.file_len).is_ok()
        {
            self.unsynced = 0;
            self.last_sync = Instant::now();
        }
    }

    /// The latest record's position as a job for the syncer, which puts the records on disk
    /// and then signs the position into `<file>.checkpoints` (and the mirror). `None` when
    /// there is nothing new to name.
    fn checkpoint_job(&self, reason: &str) -> Option<SyncJob> {
        if self.seq == self.checkpointed_seq {
            return None;
        }
        let log = self.file.as_ref()?.try_clone().ok()?;
        let name = format!("{}.checkpoints", self.file_name);
        Some(SyncJob::Checkpoint(Box::new(CheckpointJob {
            log,
            cp: Checkpoint {
                time: timestamp(SystemTime::now()),
                replica: self.cfg.replica.clone(),
                file: self.file_name.clone(),
                seq: self.seq,
                hash: self.prev.clone(),
                reason: reason.to_string(),
                key: String::new(),
                sig: String::new(),
            },
            path: self.file_path(&name),
            name,
        })))
    }

    /// What a checkpoint handed to the syncer leaves behind: its sync covers what was
    /// written so far.
    fn checkpoint_handed(&mut self) {
        self.checkpointed_seq = self.seq;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.unsynced = 0;
        self.last_sync = Instant::now();
    }

    /// A checkpoint (count, interval) the writer does not wait for. If the syncer's queue is
    /// full, the next tick tries again.
    fn checkpoint(&mut self, reason: &str) {
        if let Some(job) = self.checkpoint_job(reason)
            && self.syncer.try_send(job).is_ok()
        {
            self.checkpoint_handed();
        }
    }

    /// A checkpoint the writer waits for (rotation, shutdown), together with everything
    /// handed to the syncer before it.
    fn checkpoint_and_wait(&mut self, reason: &str) {
        off_runtime(|| {
            if let Some(job) = self.checkpoint_job(reason)
                && self.syncer.send(job).is_ok()
            {
                self.checkpoint_handed();
            }
            let (done, wait) = std::sync::mpsc::sync_channel(1);
            if self.syncer.send(SyncJob::Barrier(done)).is_ok() {
                let _ = wait.recv();
            }
        })
    }
}

fn append_synced(path: &Path, line: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(line)?;
    f.sync_data()
}
