//! `gatehouse webhooks`: look into the webhook store of a gateway (running or not) and put
//! dead letters back in the queue. The store is SQLite in WAL mode or Redis, so this reads and
//! writes beside running gateways, whose forwarders see a requeued row within a second.

use std::io::Write;

use crate::webhook::store::{HookStore, Lookup, State, StoreError};

/// Prints the outbox (`state` = pending, delivered or dead; all when `None`).
pub fn list(
    store: &dyn HookStore,
    state: Option<State>,
    limit: usize,
    out: &mut dyn Write,
) -> Result<usize, StoreError> {
    let rows = store.list(state, limit)?;
    let _ = writeln!(
        out,
        "{:>6}  {:<9}  {:>8}  {:<16}  {:<8}  {:<24}  {:<36}  last error",
        "id", "state", "attempts", "receiver", "event", "repository", "delivery"
    );
    for f in &rows {
        let _ = writeln!(
            out,
            "{:>6}  {:<9}  {:>8}  {:<16}  {:<8}  {:<24}  {:<36}  {}",
            f.id,
            f.state.as_str(),
            f.attempts,
            f.receiver,
            f.event,
            f.repo,
            f.delivery,
            f.last_error.as_deref().unwrap_or("-")
        );
    }
    let counts = store.counts()?;
    let _ = writeln!(
        out,
        "{} shown; {} pending, {} dead in all",
        rows.len(),
        counts.pending,
        counts.dead
    );
    Ok(rows.len())
}

/// Requeues dead letter `id`; false if there is none with that id.
pub fn retry(store: &dyn HookStore, id: i64) -> Result<bool, StoreError> {
    store.requeue(id, crate::webhook::now_ms())
}

/// Prints what the commit store knows of a SHA (or unambiguous prefix); false if nothing.
pub fn commit(store: &dyn HookStore, sha: &str, out: &mut dyn Write) -> Result<bool, StoreError> {
    match store.commit(sha)? {
        Lookup::NotFound => {
            let _ = writeln!(out, "no commit {sha} in the store");
            Ok(false)
        }
        Lookup::Ambiguous(shas) => {
            let _ = writeln!(out, "{sha} is ambiguous: {}", shas.join(", "));
            Ok(false)
        }
        Lookup::Found(commits) => {
            for c in commits {
                let _ = writeln!(out, "commit {} in {} ({})", c.sha, c.repo, c.git_ref);
                let _ = writeln!(out, "  title:     {}", c.title);
                let _ = writeln!(
                    out,
                    "  author:    {} <{}>{}",
                    c.author_name,
                    c.author_email,
                    if c.author_username.is_empty() {
                        String::new()
                    } else {
                        format!(" (gogs user {})", c.author_username)
                    }
                );
                let _ = writeln!(out, "  time:      {}", c.timestamp);
                let _ = writeln!(out, "  gogs pusher: {}", c.pusher);
                let _ = writeln!(
                    out,
                    "  verified pusher: {}",
                    c.verified_pusher
                        .as_ref()
                        .map(|p| match &p.email {
                            Some(e) => format!("{} <{e}> (subject {})", p.name(), p.subject),
                            None => format!("{} (subject {})", p.name(), p.subject),
                        })
                        .unwrap_or_else(|| "-".into())
                );
                for m in &c.markers {
                    let _ = writeln!(out, "  {m}");
                }
                let _ = writeln!(out, "  url:       {}", c.url);
            }
            Ok(true)
        }
    }
}
