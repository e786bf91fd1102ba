//! Which commit a resource names, answered from memory where possible.
//!
//! Every OTLP export from a service carries the same version, so the answers repeat: a hit
//! is one `DashMap` read. A miss goes to the store on a blocking thread (SQLite may be busy
//! with a webhook's fsync), all misses of one request in one trip. Found commits are kept a
//! minute (the record does not change, except for a late tag); unknown names only a few
//! seconds, so a service deployed just before its push webhook arrived is attributed soon
//! after. A store error attributes nothing and is not remembered: attribution is never a
//! reason to refuse telemetry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::{CommitAttributes, Store, Want};
use crate::webhook::store::Lookup;

const FOUND_TTL: Duration = Duration::from_secs(60);
const UNKNOWN_TTL: Duration = Duration::from_secs(5);
/// Beyond this many remembered answers the cache starts over (cheaper than LRU bookkeeping
/// on the hot path; a working set this large means something is sending random versions).
const MAX_ENTRIES: usize = 16_384;

struct Cached {
    at: Instant,
    commit: Option<Arc<CommitAttributes>>,
}

/// The commit store seen through a cache. Shared by every configuration (the store lives as
/// long as the process).
pub struct CommitCache {
    store: Option<Store>,
    entries: DashMap<Want, Cached>,
}

impl CommitCache {
    /// `store: None` (no `[webhooks]`) knows no commits.
    pub fn new(store: Option<Store>) -> CommitCache {
        CommitCache {
            store,
            entries: DashMap::new(),
        }
    }

    /// Whether there is a store to ask (without `[webhooks]` nothing can be attributed).
    pub fn has_store(&self) -> bool {
        self.store.is_some()
    }

    /// Forgets unknown commits and branch heads, so what a delivery just recorded is found
    /// on the next request.
    pub fn recorded(&self) {
        self.entries
            .retain(|w, c| matches!(w, Want::Sha(_)) && c.commit.is_some());
    }

    /// The commit for each want (`None` for `Want::Nothing` and unknown names).
    pub async fn resolve(&self, wants: &[Want]) -> Vec<Option<Arc<CommitAttributes>>> {
        let mut out = vec![None; wants.len()];
        let Some(store) = &self.store else {
            return out;
        };
        let now = Instant::now();
        let mut misses: Vec<Want> = Vec::new();
        for (slot, want) in out.iter_mut().zip(wants) {
            if *want == Want::Nothing {
                continue;
            }
            match self.entries.get(want) {
                Some(c) if fresh(&c, now) => *slot = c.commit.clone(),
                _ => {
                    if !misses.contains(want) {
                        misses.push(want.clone());
                    }
                }
            }
        }
        if misses.is_empty() {
            return out;
        }
        let store = store.clone();
        let answers = match tokio::task::spawn_blocking(move || {
            misses
                .into_iter()
                .map(|w| {
                    let found = lookup(&*store, &w);
                    (w, found)
                })
                .collect::<Vec<_>>()
        })
        .await
        {
            Ok(a) => a,
            Err(_) => return out,
        };
        if self.entries.len() + answers.len() > MAX_ENTRIES {
            self.entries.clear();
        }
        let now = Instant::now();
        for (want, found) in answers {
            let Ok(commit) = found else { continue };
            for (slot, w) in out.iter_mut().zip(wants) {
                if *w == want {
                    *slot = commit.clone();
                }
            }
            self.entries.insert(want, Cached { at: now, commit });
        }
        out
    }
}

fn fresh(c: &Cached, now: Instant) -> bool {
    let ttl = if c.commit.is_some() {
        FOUND_TTL
    } else {
        UNKNOWN_TTL
    };
    now.duration_since(c.at) < ttl
}

/// One want against the store; `Err(())` when the store failed (logged, not cached).
fn lookup(
    store: &dyn crate::webhook::store::HookStore,
    want: &Want,
) -> Result<Option<Arc<CommitAttributes>>, ()> {
    let sha = match want {
        Want::Nothing => return Ok(None),
        Want::Sha(s) => s.clone(),
        Want::Head { repo, git_ref } => match store.head(repo, git_ref) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "commit store unavailable for attribution");
                return Err(());
            }
        },
    };
    match store.commit(&sha) {
        // The same commit pushed to several repositories (forks): the first one recorded.
        Ok(Lookup::Found(records)) => Ok(records
            .first()
            .map(|c| Arc::new(CommitAttributes::from_record(c)))),
        Ok(Lookup::NotFound | Lookup::Ambiguous(_)) => Ok(None),
        Err(e) => {
            tracing::warn!(error = %e, "commit store unavailable for attribution");
            Err(())
        }
    }
}
