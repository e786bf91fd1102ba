//! What webhooks leave behind: deliveries seen (the replay guard), commits and version markers
//! (the commit store the attribution uses), pushes the gateway itself authorised (to name the
//! verified pusher), and the outbox of forwards.
//!
//! [`HookStore`] is the seam for a store shared by several replicas; [`SqliteStore`] is the
//! embedded one: one SQLite file in WAL mode with `synchronous = FULL`, so a delivery Gogs was
//! told about survives a crash or power loss, and `gatehouse webhooks` can read and requeue
//! while the gateway runs. Every delivery is one transaction: seen-check, commits, markers
//! and outbox rows land together or not at all.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("webhook store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("webhook store {0}: lock poisoned")]
    Poisoned(String),
    #[error("webhook store {path}: {message}")]
    Failed { path: String, message: String },
}

/// The SSO identity that pushed, as the gateway authenticated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pusher {
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl Pusher {
    /// The name to show: username, else subject.
    pub fn name(&self) -> &str {
        self.username.as_deref().unwrap_or(&self.subject)
    }
}

/// One pushed commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CommitRecord {
    pub sha: String,
    /// `owner/name` as Gogs spells it.
    pub repo: String,
    pub repo_url: String,
    pub git_ref: String,
    pub before: String,
    pub after: String,
    pub author_name: String,
    pub author_email: String,
    pub author_username: String,
    pub committer_name: String,
    pub committer_email: String,
    pub committer_username: String,
    pub title: String,
    pub timestamp: String,
    pub url: String,
    /// Gogs's `pusher` (what Gogs believes; with a shared gateway credential this is the
    /// credential's user, not the person).
    pub pusher: String,
    pub verified_pusher: Option<Pusher>,
    /// Tags and releases pointing at this commit.
    pub markers: Vec<String>,
}

/// A tag or release pointing at a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub repo: String,
    pub name: String,
    /// `tag` or `release`.
    pub kind: String,
    pub sha: Option<String>,
}

/// A forward to write with a delivery.
#[derive(Debug, Clone)]
pub struct NewForward {
    pub receiver: String,
}

/// A delivery, verified and parsed, to record.
pub struct Delivery<'a> {
    pub id: &'a str,
    pub body_sha: &'a str,
    pub event: &'a str,
    pub repo: &'a str,
    pub source: &'a str,
    pub body: &'a [u8],
    /// `(repository, ref, new SHA)` of a push, to find the verified pusher.
    pub pushed: Option<(&'a str, &'a str, &'a str)>,
    pub commits: &'a [CommitRecord],
    pub markers: &'a [Marker],
    pub forwards: &'a [NewForward],
    pub now_ms: i64,
    pub replay_window_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Recorded; forwards queued with these outbox ids.
    New {
        verified_pusher: Option<Pusher>,
        outbox: Vec<i64>,
    },
    /// Seen before within the replay window: `delivery` is the first one's id.
    Duplicate {
        delivery: String,
        first_seen_ms: i64,
        same_id: bool,
    },
    /// The same delivery id with a different body.
    Conflict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Delivered,
    Dead,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Delivered => "delivered",
            State::Dead => "dead",
        }
    }

    pub(super) fn parse(s: &str) -> State {
        match s {
            "delivered" => State::Delivered,
            "dead" => State::Dead,
            _ => State::Pending,
        }
    }
}

/// One row of the outbox.
#[derive(Debug, Clone, Serialize)]
pub struct Forward {
    pub id: i64,
    pub delivery: String,
    pub receiver: String,
    pub event: String,
    pub repo: String,
    #[serde(skip)]
    pub body: Vec<u8>,
    pub pusher: Option<Pusher>,
    pub state: State,
    pub attempts: u32,
    pub next_at_ms: i64,
    pub last_error: Option<String>,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub pending: u64,
    pub dead: u64,
}

/// What a commit lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Vec<CommitRecord>),
    NotFound,
    /// The prefix names more than one commit.
    Ambiguous(Vec<String>),
}

/// Limits applied by [`HookStore::prune`].
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub now_ms: i64,
    pub replay_window_ms: i64,
    pub commit_retention_ms: i64,
    pub commit_max: u64,
    /// Delivered forwards are kept this long for `webhooks list`.
    pub delivered_ms: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub deliveries: u64,
    pub commits: u64,
    pub forwards: u64,
}

pub trait HookStore: Send + Sync {
    /// Records a verified delivery (once: see [`Received`]).
    fn receive(&self, d: &Delivery<'_>) -> Result<Received, StoreError>;
    /// Notes a push the gateway authorised, so its webhook can name the person.
    fn note_push(
        &self,
        repo: &str,
        refs: &[(String, String)],
        pusher: &Pusher,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Commits by full SHA or by an unambiguous prefix of at least 7 hex digits.
    fn commit(&self, sha: &str) -> Result<Lookup, StoreError>;
    /// The SHA the latest push delivery moved `git_ref` of `repo` (any case) to.
    fn head(&self, repo: &str, git_ref: &str) -> Result<Option<String>, StoreError>;
    /// Pending forwards due by `now_ms`, leased for `lease_ms` so they are not taken twice.
    fn take_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<Forward>, StoreError>;
    /// When the next pending forward is due.
    fn next_due(&self) -> Result<Option<i64>, StoreError>;
    fn delivered(&self, id: i64, attempts: u32, now_ms: i64) -> Result<(), StoreError>;
    fn retry_at(
        &self,
        id: i64,
        attempts: u32,
        next_ms: i64,
        error: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    fn dead(&self, id: i64, attempts: u32, error: &str, now_ms: i64) -> Result<(), StoreError>;
    fn list(&self, state: Option<State>, limit: usize) -> Result<Vec<Forward>, StoreError>;
    /// Puts a dead letter back in the queue; false if there is no dead letter with that id.
    fn requeue(&self, id: i64, now_ms: i64) -> Result<bool, StoreError>;
    fn counts(&self) -> Result<Counts, StoreError>;
    fn prune(&self, r: &Retention) -> Result<Pruned, StoreError>;
}

// Tables keyed by what they are looked up by are WITHOUT ROWID (one B-tree each, fewer pages
// written per delivery); retention scans by time once an hour instead of keeping time indexes.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    delivery TEXT NOT NULL, body_sha TEXT NOT NULL, event TEXT NOT NULL, repo TEXT NOT NULL,
    source TEXT NOT NULL, received INTEGER NOT NULL, PRIMARY KEY (delivery, body_sha))
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_body ON deliveries (body_sha);
CREATE TABLE IF NOT EXISTS commits (
    sha TEXT NOT NULL, repo TEXT NOT NULL, repo_url TEXT NOT NULL, git_ref TEXT NOT NULL,
    before_sha TEXT NOT NULL, after_sha TEXT NOT NULL,
    author_name TEXT NOT NULL, author_email TEXT NOT NULL, author_username TEXT NOT NULL,
    committer_name TEXT NOT NULL, committer_email TEXT NOT NULL, committer_username TEXT NOT NULL,
    title TEXT NOT NULL, timestamp TEXT NOT NULL, url TEXT NOT NULL, pusher TEXT NOT NULL,
    verified_pusher TEXT, delivery TEXT NOT NULL, received INTEGER NOT NULL,
    PRIMARY KEY (sha, repo)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS markers (
    repo TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, sha TEXT,
    received INTEGER NOT NULL, PRIMARY KEY (repo, name, kind)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS markers_sha ON markers (sha);
CREATE TABLE IF NOT EXISTS heads (
    repo TEXT NOT NULL, git_ref TEXT NOT NULL, sha TEXT NOT NULL, received INTEGER NOT NULL,
    PRIMARY KEY (repo, git_ref)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pushes (
    repo TEXT NOT NULL, sha TEXT NOT NULL, git_ref TEXT NOT NULL, pusher TEXT NOT NULL,
    at INTEGER NOT NULL, PRIMARY KEY (repo, sha, git_ref)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, delivery TEXT NOT NULL, receiver TEXT NOT NULL,
    event TEXT NOT NULL, repo TEXT NOT NULL, body BLOB NOT NULL, pusher TEXT,
    state TEXT NOT NULL, attempts INTEGER NOT NULL, next_at INTEGER NOT NULL,
    last_error TEXT, created INTEGER NOT NULL, updated INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_at);
";

pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Deliveries waiting for the next group commit, and whether one is being written.
    group: Mutex<Group>,
    /// Signalled when a group commit has handed out its results.
    written: Condvar,
}

/// The group-commit queue.
#[derive(Default)]
struct Group {
    queue: Vec<(OwnedDelivery, Arc<Slot>)>,
    /// A caller is writing a batch: new arrivals wait for the next one.
    writing: bool,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let name = path.display().to_string();
        let err = |source| StoreError::Sqlite {
            path: name.clone(),
            source,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        // Pages every delivery touches are copied to the main file once per checkpoint:
        // fewer, larger checkpoints copy them less often (a WAL of up to ~16 MB).
        conn.pragma_update(None, "wal_autocheckpoint", 4000)
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            group: Mutex::new(Group::default()),
            written: Condvar::new(),
        })
    }

    fn error(&self, message: String) -> StoreError {
        StoreError::Failed {
            path: self.path.display().to_string(),
            message,
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::Poisoned(self.path.display().to_string()))?;
        f(&mut conn).map_err(|source| StoreError::Sqlite {
            path: self.path.display().to_string(),
            source,
        })
    }
}

fn pusher_json(p: &Option<Pusher>) -> Option<String> {
    p.as_ref().and_then(|p| serde_json::to_string(p).ok())
}

fn pusher_of(text: Option<String>) -> Option<Pusher> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn forward_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Forward> {
    Ok(Forward {
        id: row.get(0)?,
        delivery: row.get(1)?,
        receiver: row.get(2)?,
        event: row.get(3)?,
        repo: row.get(4)?,
        body: row.get(5)?,
        pusher: pusher_of(row.get(6)?),
        state: State::parse(&row.get::<_, String>(7)?),
        attempts: row.get(8)?,
        next_at_ms: row.get(9)?,
        last_error: row.get(10)?,
        created_ms: row.get(11)?,
    })
}

const FORWARD_COLUMNS: &str = "id, delivery, receiver, event, repo, body, pusher, state, attempts, next_at, last_error, created";

/// The earliest `(text, received)` row at or after `since`. The window is applied here, not
/// in SQL: SQLite re-prepares a statement whose bound value limits a range on an indexed
/// column every time it runs, and a key matches one or two rows.
fn earliest_since(
    stmt: &mut rusqlite::CachedStatement<'_>,
    key: &str,
    since: i64,
) -> rusqlite::Result<Option<(String, i64)>> {
    let mut earliest: Option<(String, i64)> = None;
    let rows = stmt.query_map(params![key], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (text, at) = row?;
        if at >= since && earliest.as_ref().is_none_or(|(_, first)| at < *first) {
            earliest = Some((text, at));
        }
    }
    Ok(earliest)
}

/// Records one delivery inside `tx` (see [`HookStore::receive`]).
fn record(tx: &rusqlite::Transaction<'_>, d: &Delivery<'_>) -> rusqlite::Result<Received> {
    let since = d.now_ms - d.replay_window_ms;
    let same_id = earliest_since(
        &mut tx.prepare_cached("SELECT body_sha, received FROM deliveries WHERE delivery = ?1")?,
        d.id,
        since,
    )?;
    if let Some((body_sha, first)) = same_id {
        return Ok(if body_sha == d.body_sha {
            Received::Duplicate {
                delivery: d.id.to_string(),
                first_seen_ms: first,
                same_id: true,
            }
        } else {
            Received::Conflict
        });
    }
    let same_body = earliest_since(
        &mut tx.prepare_cached("SELECT delivery, received FROM deliveries WHERE body_sha = ?1")?,
        d.body_sha,
        since,
    )?;
    if let Some((delivery, first)) = same_body {
        return Ok(Received::Duplicate {
            delivery,
            first_seen_ms: first,
            same_id: false,
        });
    }
    tx.prepare_cached(
        "INSERT OR REPLACE INTO deliveries (delivery, body_sha, event, repo, source, received) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![d.id, d.body_sha, d.event, d.repo, d.source, d.now_ms])?;
    let verified_pusher = match d.pushed {
        Some((repo, git_ref, sha)) => pusher_of(
            tx.prepare_cached(
                "SELECT pusher FROM pushes WHERE repo = ?1 AND sha = ?2 AND git_ref = ?3 ORDER BY at DESC LIMIT 1",
            )?
            .query_row(params![repo.to_ascii_lowercase(), sha, git_ref], |r| r.get(0))
            .optional()?,
        ),
        None => None,
    };
    let pusher_text = pusher_json(&verified_pusher);
    if let Some((repo, git_ref, sha)) = d.pushed
        && !sha.bytes().all(|b| b == b'0')
    {
        tx.prepare_cached(
            "INSERT INTO heads (repo, git_ref, sha, received) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (repo, git_ref) DO UPDATE SET sha = excluded.sha, received = excluded.received",
        )?
        .execute(params![repo.to_ascii_lowercase(), git_ref, sha, d.now_ms])?;
    }
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO commits (sha, repo, repo_url, git_ref, before_sha, after_sha,
                author_name, author_email, author_username, committer_name, committer_email,
                committer_username, title, timestamp, url, pusher, verified_pusher, delivery, received)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
             ON CONFLICT (sha, repo) DO UPDATE SET
                verified_pusher = COALESCE(commits.verified_pusher, excluded.verified_pusher)",
        )?;
        for c in d.commits {
            insert.execute(params![
                c.sha,
                c.repo,
                c.repo_url,
                c.git_ref,
                c.before,
                c.after,
                c.author_name,
                c.author_email,
                c.author_username,
                c.committer_name,
                c.committer_email,
                c.committer_username,
                c.title,
                c.timestamp,
                c.url,
                c.pusher,
                pusher_text,
                d.id,
                d.now_ms
            ])?;
        }
    }
    for m in d.markers {
        // A release names its tag; the tag's SHA comes from the earlier `create`.
        let sha = match &m.sha {
            Some(s) => Some(s.clone()),
            None => tx
                .prepare_cached(
                    "SELECT sha FROM markers WHERE repo = ?1 AND name = ?2 AND kind = 'tag'",
                )?
                .query_row(params![m.repo, m.name], |r| r.get::<_, Option<String>>(0))
                .optional()?
                .flatten(),
        };
        // A known SHA is never replaced by an unknown one.
        tx.prepare_cached(
            "INSERT INTO markers (repo, name, kind, sha, received) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (repo, name, kind) DO UPDATE SET sha = COALESCE(excluded.sha, markers.sha), received = excluded.received",
        )?
        .execute(params![m.repo, m.name, m.kind, sha, d.now_ms])?;
        // A tag that arrives after its release gives the release its SHA.
        if m.kind == "tag" && sha.is_some() {
            tx.prepare_cached(
                "UPDATE markers SET sha = ?3 WHERE repo = ?1 AND name = ?2 AND kind = 'release' AND sha IS NULL",
            )?
            .execute(params![m.repo, m.name, sha])?;
        }
    }
    let mut outbox = Vec::with_capacity(d.forwards.len());
    for f in d.forwards {
        tx.prepare_cached(
            "INSERT INTO outbox (delivery, receiver, event, repo, body, pusher, state, attempts, next_at, created, updated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7, ?7)",
        )?
        .execute(params![d.id, f.receiver, d.event, d.repo, d.body, pusher_text, d.now_ms])?;
        outbox.push(tx.last_insert_rowid());
    }
    Ok(Received::New {
        verified_pusher,
        outbox,
    })
}

/// A caller's place in a group commit.
#[derive(Default)]
struct Slot(Mutex<Option<Result<Received, String>>>);

impl Slot {
    fn put(&self, r: Result<Received, String>) {
        if let Ok(mut v) = self.0.lock() {
            *v = Some(r);
        }
    }

    fn take(&self) -> Option<Result<Received, String>> {
        self.0.lock().ok().and_then(|mut v| v.take())
    }
}

/// A [`Delivery`] that can wait in the group-commit queue.
struct OwnedDelivery {
    id: String,
    body_sha: String,
    event: String,
    repo: String,
    source: String,
    body: Vec<u8>,
    pushed: Option<(String, String, String)>,
    commits: Vec<CommitRecord>,
    markers: Vec<Marker>,
    forwards: Vec<NewForward>,
    now_ms: i64,
    replay_window_ms: i64,
}

impl From<&Delivery<'_>> for OwnedDelivery {
    fn from(d: &Delivery<'_>) -> Self {
        OwnedDelivery {
            id: d.id.to_string(),
            body_sha: d.body_sha.to_string(),
            event: d.event.to_string(),
            repo: d.repo.to_string(),
            source: d.source.to_string(),
            body: d.body.to_vec(),
            pushed: d
                .pushed
                .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())),
            commits: d.commits.to_vec(),
            markers: d.markers.to_vec(),
            forwards: d.forwards.to_vec(),
            now_ms: d.now_ms,
            replay_window_ms: d.replay_window_ms,
        }
    }
}

impl OwnedDelivery {
    fn view(&self) -> Delivery<'_> {
        Delivery {
            id: &self.id,
            body_sha: &self.body_sha,
            event: &self.event,
            repo: &self.repo,
            source: &self.source,
            body: &self.body,
            pushed: self
                .pushed
                .as_ref()
                .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str())),
            commits: &self.commits,
            markers: &self.markers,
            forwards: &self.forwards,
            now_ms: self.now_ms,
            replay_window_ms: self.replay_window_ms,
        }
    }
}

impl SqliteStore {
    fn group(&self) -> Result<MutexGuard<'_, Group>, StoreError> {
        self.group
            .lock()
            .map_err(|_| StoreError::Poisoned(self.path.display().to_string()))
    }

    /// Records `batch` in one transaction and hands each caller its result.
    fn write_batch(&self, batch: &[(OwnedDelivery, Arc<Slot>)]) {
        let results = match self.conn.lock() {
            Ok(mut conn) => (|| {
                let tx = conn.transaction()?;
                let mut results = Vec::with_capacity(batch.len());
                for (d, _) in batch {
                    results.push(record(&tx, &d.view())?);
                }
                tx.commit()?;
                Ok::<_, rusqlite::Error>(results)
            })()
            .map_err(|e| e.to_string()),
            Err(_) => Err("lock poisoned".to_string()),
        };
        match results {
            Ok(results) => {
                for ((_, s), r) in batch.iter().zip(results) {
                    s.put(Ok(r));
                }
            }
            Err(text) => {
                for (_, s) in batch {
                    s.put(Err(text.clone()));
                }
            }
        }
    }
}

/// Ends a caller's turn at writing, even if it panicked: the next waiting caller writes the
/// batch queued meanwhile.
struct Writing<'a>(&'a SqliteStore);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut g = self
            .0
            .group
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        g.writing = false;
        drop(g);
        self.0.written.notify_all();
    }
}

impl HookStore for SqliteStore {
    fn receive(&self, d: &Delivery<'_>) -> Result<Received, StoreError> {
        // Group commit: a caller that finds nobody writing writes every delivery queued so
        // far in one transaction (one fsync); callers arriving meanwhile queue up and wait,
        // and the first of them whose result is not in writes the next batch. Results are
        // handed out through the slots, so a caller whose delivery is written returns at once
        // instead of queueing behind the next transaction's fsync.
        let slot = Arc::new(Slot::default());
        let queued = (OwnedDelivery::from(d), slot.clone());
        let mut g = self.group()?;
        g.queue.push(queued);
        loop {
            if let Some(done) = slot.take() {
                return done.map_err(|e| self.error(e));
            }
            if !g.writing {
                break;
            }
            g = self
                .written
                .wait(g)
                .map_err(|_| StoreError::Poisoned(self.path.display().to_string()))?;
        }
        g.writing = true;
        drop(g);
        let writing = Writing(self);
        // Callers whose results the last batch just handed out are usually about to queue
        // their next delivery: let them, so the fsync this batch costs is shared by more.
        std::thread::yield_now();
        let batch = std::mem::take(
            &mut self
                .group
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .queue,
        );
        self.write_batch(&batch);
        drop(writing);
        slot.take()
            .unwrap_or_else(|| Err("the delivery was not recorded".into()))
            .map_err(|e| self.error(e))
    }

    fn note_push(
        &self,
        repo: &str,
        refs: &[(String, String)],
        pusher: &Pusher,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let text = pusher_json(&Some(pusher.clone())).unwrap_or_default();
        self.with(|conn| {
            let tx = conn.transaction()?;
            for (git_ref, sha) in refs {
                tx.execute(
                    "INSERT INTO pushes (repo, sha, git_ref, pusher, at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (repo, sha, git_ref) DO UPDATE SET pusher = excluded.pusher, at = excluded.at",
                    params![repo.to_ascii_lowercase(), sha, git_ref, text, now_ms],
                )?;
            }
            tx.commit()
        })
    }

    fn commit(&self, sha: &str) -> Result<Lookup, StoreError> {
        let prefix = sha.to_ascii_lowercase();
        if prefix.len() < 7 || prefix.len() > 40 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Lookup::NotFound);
        }
        self.with(|conn| {
            // 'g' sorts after every hex digit: [prefix, prefix + "g") is exactly the prefix.
            let upper = format!("{prefix}g");
            let mut shas: Vec<String> = conn
                .prepare_cached(
                    "SELECT DISTINCT sha FROM commits WHERE sha >= ?1 AND sha < ?2 ORDER BY sha LIMIT 5",
                )?
                .query_map(params![prefix, upper], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            match shas.len() {
                0 => return Ok(Lookup::NotFound),
                1 => {}
                _ => return Ok(Lookup::Ambiguous(shas)),
            }
            let full = shas.remove(0);
            let mut found: Vec<CommitRecord> = conn
                .prepare_cached(
                    "SELECT sha, repo, repo_url, git_ref, before_sha, after_sha, author_name, author_email,
                        author_username, committer_name, committer_email, committer_username, title,
                        timestamp, url, pusher, verified_pusher
                     FROM commits WHERE sha = ?1 ORDER BY received",
                )?
                .query_map(params![full], |r| {
                    Ok(CommitRecord {
                        sha: r.get(0)?,
                        repo: r.get(1)?,
                        repo_url: r.get(2)?,
                        git_ref: r.get(3)?,
                        before: r.get(4)?,
                        after: r.get(5)?,
                        author_name: r.get(6)?,
                        author_email: r.get(7)?,
                        author_username: r.get(8)?,
                        committer_name: r.get(9)?,
                        committer_email: r.get(10)?,
                        committer_username: r.get(11)?,
                        title: r.get(12)?,
                        timestamp: r.get(13)?,
                        url: r.get(14)?,
                        pusher: r.get(15)?,
                        verified_pusher: pusher_of(r.get(16)?),
                        markers: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let markers: Vec<(String, String, String)> = conn
                .prepare_cached("SELECT repo, kind, name FROM markers WHERE sha = ?1 ORDER BY received")?
                .query_map(params![full], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for c in &mut found {
                c.markers = markers
                    .iter()
                    .filter(|(repo, _, _)| *repo == c.repo)
                    .map(|(_, kind, name)| format!("{kind} {name}"))
                    .collect();
            }
            Ok(Lookup::Found(found))
        })
    }

    fn head(&self, repo: &str, git_ref: &str) -> Result<Option<String>, StoreError> {
        self.with(|conn| {
            conn.prepare_cached("SELECT sha FROM heads WHERE repo = ?1 AND git_ref = ?2")?
                .query_row(params![repo.to_ascii_lowercase(), git_ref], |r| r.get(0))
                .optional()
        })
    }

    fn take_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<Forward>, StoreError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let due: Vec<Forward> = tx
                .prepare_cached(&format!(
                    "SELECT {FORWARD_COLUMNS} FROM outbox WHERE state = 'pending' AND next_at <= ?1 ORDER BY next_at, id LIMIT ?2"
                ))?
                .query_map(params![now_ms, limit as i64], forward_row)?
                .collect::<rusqlite::Result<_>>()?;
            for f in &due {
                tx.execute(
                    "UPDATE outbox SET next_at = ?2 WHERE id = ?1",
                    params![f.id, now_ms + lease_ms],
                )?;
            }
            tx.commit()?;
            Ok(due)
        })
    }

    fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT MIN(next_at) FROM outbox WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )
        })
    }

    fn delivered(&self, id: i64, attempts: u32, now_ms: i64) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE outbox SET state = 'delivered', attempts = ?2, last_error = NULL, updated = ?3 WHERE id = ?1",
                params![id, attempts, now_ms],
            )
            .map(drop)
        })
    }

    fn retry_at(
        &self,
        id: i64,
        attempts: u32,
        next_ms: i64,
        error: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE outbox SET attempts = ?2, next_at = ?3, last_error = ?4, updated = ?5 WHERE id = ?1",
                params![id, attempts, next_ms, error, now_ms],
            )
            .map(drop)
        })
    }

    fn dead(&self, id: i64, attempts: u32, error: &str, now_ms: i64) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE outbox SET state = 'dead', attempts = ?2, last_error = ?3, updated = ?4 WHERE id = ?1",
                params![id, attempts, error, now_ms],
            )
            .map(drop)
        })
    }

    fn list(&self, state: Option<State>, limit: usize) -> Result<Vec<Forward>, StoreError> {
        self.with(|conn| {
            let rows = match state {
                Some(s) => conn
                    .prepare_cached(&format!(
                        "SELECT {FORWARD_COLUMNS} FROM outbox WHERE state = ?1 ORDER BY id DESC LIMIT ?2"
                    ))?
                    .query_map(params![s.as_str(), limit as i64], forward_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                None => conn
                    .prepare_cached(&format!(
                        "SELECT {FORWARD_COLUMNS} FROM outbox ORDER BY id DESC LIMIT ?1"
                    ))?
                    .query_map(params![limit as i64], forward_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            Ok(rows)
        })
    }

    fn requeue(&self, id: i64, now_ms: i64) -> Result<bool, StoreError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?2, updated = ?2 WHERE id = ?1 AND state = 'dead'",
                params![id, now_ms],
            )
            .map(|n| n == 1)
        })
    }

    fn counts(&self) -> Result<Counts, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'dead'), 0) FROM outbox",
                [],
                |r| {
                    Ok(Counts {
                        pending: r.get::<_, i64>(0)? as u64,
                        dead: r.get::<_, i64>(1)? as u64,
                    })
                },
            )
        })
    }

    fn prune(&self, r: &Retention) -> Result<Pruned, StoreError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let deliveries = tx.execute(
                "DELETE FROM deliveries WHERE received < ?1",
                params![r.now_ms - r.replay_window_ms],
            )?;
            let mut commits = tx.execute(
                "DELETE FROM commits WHERE received < ?1",
                params![r.now_ms - r.commit_retention_ms],
            )?;
            let count: i64 = tx.query_row("SELECT COUNT(*) FROM commits", [], |r| r.get(0))?;
            if count as u64 > r.commit_max {
                commits += tx.execute(
                    "DELETE FROM commits WHERE received < (SELECT received FROM commits ORDER BY received DESC LIMIT 1 OFFSET ?1)",
                    params![r.commit_max as i64],
                )?;
            }
            tx.execute(
                "DELETE FROM markers WHERE received < ?1",
                params![r.now_ms - r.commit_retention_ms],
            )?;
            tx.execute(
                "DELETE FROM heads WHERE received < ?1",
                params![r.now_ms - r.commit_retention_ms],
            )?;
            // A push's webhook arrives within seconds; a day is generous.
            tx.execute(
                "DELETE FROM pushes WHERE at < ?1",
                params![r.now_ms - 24 * 3600 * 1000],
            )?;
            let forwards = tx.execute(
                "DELETE FROM outbox WHERE state = 'delivered' AND updated < ?1",
                params![r.now_ms - r.delivered_ms],
            )?;
            tx.commit()?;
            Ok(Pruned {
                deliveries: deliveries as u64,
                commits: commits as u64,
                forwards: forwards as u64,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery<'a>(
        id: &'a str,
        body: &'a [u8],
        body_sha: &'a str,
        commits: &'a [CommitRecord],
    ) -> Delivery<'a> {
        Delivery {
            id,
            body_sha,
            event: "push",
            repo: "platform/app",
            source: "gogs",
            body,
            pushed: None,
            commits,
            markers: &[],
            forwards: Box::leak(Box::new([NewForward {
                receiver: "ci".into(),
            }])),
            now_ms: 1_000_000,
            replay_window_ms: 60_000,
        }
    }

    fn commit(sha: &str) -> CommitRecord {
        CommitRecord {
            sha: sha.into(),
            repo: "platform/app".into(),
            title: format!("commit {sha}"),
            ..Default::default()
        }
    }

    #[test]
    fn concurrent_deliveries_are_each_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("s.sqlite")).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let id = format!("d-{t}-{i}");
                        let sha = format!("{t:020x}{i:020x}");
                        for round in 0..2 {
                            let got = store
                                .receive(&delivery(&id, id.as_bytes(), &id, &[commit(&sha)]))
                                .unwrap();
                            match (round, got) {
                                (0, Received::New { outbox, .. }) => assert_eq!(outbox.len(), 1),
                                (1, Received::Duplicate { same_id: true, .. }) => {}
                                (r, other) => panic!("round {r}: {other:?}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.counts().unwrap().pending, 400);
    }

    #[test]
    fn replays_conflicts_and_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite")).unwrap();
        let a = "aaaaaaa1111111111111111111111111111111111";
        let b = "aaaaaaa2222222222222222222222222222222222";
        let first = store
            .receive(&delivery(
                "one",
                b"body",
                "h1",
                &[commit(&a[..40]), commit(&b[..40])],
            ))
            .unwrap();
        assert!(matches!(first, Received::New { .. }));
        // The same body under a new id is a replay of the first.
        assert_eq!(
            store.receive(&delivery("two", b"body", "h1", &[])).unwrap(),
            Received::Duplicate {
                delivery: "one".into(),
                first_seen_ms: 1_000_000,
                same_id: false
            }
        );
        // The same id with another body is a conflict.
        assert_eq!(
            store
                .receive(&delivery("one", b"other", "h2", &[]))
                .unwrap(),
            Received::Conflict
        );
        assert!(matches!(store.commit("aaaaaaa").unwrap(), Lookup::Ambiguous(v) if v.len() == 2));
        assert!(
            matches!(store.commit("aaaaaaa1").unwrap(), Lookup::Found(v) if v[0].sha == a[..40])
        );
        assert_eq!(
            store.commit("aaaaaa").unwrap(),
            Lookup::NotFound,
            "shorter than 7"
        );
        assert_eq!(store.commit("bbbbbbb").unwrap(), Lookup::NotFound);
        // Outside the replay window the delivery is new again.
        let mut later = delivery("one", b"body", "h1", &[]);
        later.now_ms += 120_000;
        assert!(matches!(
            store.receive(&later).unwrap(),
            Received::New { .. }
        ));
        // The same body under a third id, after the window too: new, and from then on the
        // replay of that one, not of the first (whose row is still there, outside the window).
        let mut third = delivery("three", b"again", "h3", &[]);
        third.now_ms += 1_000;
        assert!(matches!(
            store.receive(&third).unwrap(),
            Received::New { .. }
        ));
        let mut fourth = delivery("four", b"again", "h3", &[]);
        fourth.now_ms += 120_000;
        assert!(matches!(
            store.receive(&fourth).unwrap(),
            Received::New { .. }
        ));
        let mut fifth = delivery("five", b"again", "h3", &[]);
        fifth.now_ms += 121_000;
        assert_eq!(
            store.receive(&fifth).unwrap(),
            Received::Duplicate {
                delivery: "four".into(),
                first_seen_ms: fourth.now_ms,
                same_id: false
            }
        );
    }
}
