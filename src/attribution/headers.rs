//! What the upstream is told about the commit and the person behind a request, in headers.
//!
//! `X-Gatehouse-User` (the authenticated caller's username, else subject),
//! `X-Gatehouse-Commit` (full SHA), `X-Gatehouse-Commit-Author` (the author's Gogs username,
//! else name) and `X-Gatehouse-Repository` (`owner/name`), plus the same facts as W3C
//! `baggage` entries `gatehouse.user`, `gatehouse.commit`, `gatehouse.repository`, so that
//! instrumented services downstream can put them on their own spans. Values are
//! percent-encoded UTF-8 (header values are ASCII). Clients cannot send any of these: the
//! `x-gatehouse-` namespace and `gatehouse.*` baggage entries they send are removed before
//! these are set (`proxy/headers.rs`, `telemetry/trace_context.rs`).

use std::sync::Arc;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use super::CommitAttributes;
use crate::telemetry::trace_context::{BAGGAGE, baggage_with, percent_encode};

pub static USER: HeaderName = HeaderName::from_static("x-gatehouse-user");
pub static COMMIT: HeaderName = HeaderName::from_static("x-gatehouse-commit");
pub static COMMIT_AUTHOR: HeaderName = HeaderName::from_static("x-gatehouse-commit-author");
pub static REPOSITORY: HeaderName = HeaderName::from_static("x-gatehouse-repository");
/// A client may name the commit it runs; it counts only if the commit store knows it.
pub static CLIENT_COMMIT: HeaderName = HeaderName::from_static("x-commit-sha");

/// The commit a request is about, as far as the gateway knows it.
#[derive(Debug, Clone, Default)]
pub struct RequestCommit {
    /// A commit the store knows (author and repository included).
    pub known: Option<Arc<CommitAttributes>>,
    /// A commit seen in the request itself (the new SHA of a push) and its repository.
    pub pushed: Option<(String, String)>,
}

impl RequestCommit {
    fn sha_and_repo(&self) -> Option<(&str, &str)> {
        match (&self.known, &self.pushed) {
            (Some(c), _) => Some((&c.sha, &c.repo)),
            (None, Some((sha, repo))) => Some((sha, repo)),
            (None, None) => None,
        }
    }
}

fn value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&percent_encode(text)).ok()
}

/// Sets the attribution headers and baggage on a request going upstream.
pub fn apply(headers: &mut HeaderMap, user: Option<&str>, commit: &RequestCommit) {
    let mut entries: Vec<(&str, &str)> = Vec::with_capacity(3);
    if let Some(u) = user.filter(|u| !u.is_empty()) {
        if let Some(v) = value(u) {
            headers.insert(USER.clone(), v);
        }
        entries.push(("gatehouse.user", u));
    }
    if let Some((sha, repo)) = commit.sha_and_repo() {
        if let Some(v) = value(sha) {
            headers.insert(COMMIT.clone(), v);
        }
        if let Some(v) = value(repo) {
            headers.insert(REPOSITORY.clone(), v);
        }
        entries.push(("gatehouse.commit", sha));
        entries.push(("gatehouse.repository", repo));
    }
    if let Some(c) = &commit.known
        && let Some(v) = value(&c.author)
    {
        headers.insert(COMMIT_AUTHOR.clone(), v);
    }
    match baggage_with(headers, &entries) {
        Some(v) => {
            headers.insert(BAGGAGE, v);
        }
        None => {
            headers.remove(BAGGAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::store::CommitRecord;

    #[test]
    fn known_commits_and_users_become_headers_and_baggage() {
        let mut h = HeaderMap::new();
        h.insert(
            BAGGAGE,
            HeaderValue::from_static("gatehouse.user=mallory,team=payments"),
        );
        let c = CommitRecord {
            sha: "4f3b9c1d2e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c".into(),
            repo: "platform/checkout".into(),
            author_name: "Zoë Example".into(),
            ..Default::default()
        };
        let commit = RequestCommit {
            known: Some(Arc::new(CommitAttributes::from_record(&c))),
            pushed: None,
        };
        apply(&mut h, Some("alice"), &commit);
        assert_eq!(h[&USER], "alice");
        assert_eq!(h[&COMMIT], "4f3b9c1d2e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c");
        assert_eq!(h[&REPOSITORY], "platform/checkout");
        assert_eq!(h[&COMMIT_AUTHOR], "Zo%C3%AB%20Example");
        let baggage = h[BAGGAGE].to_str().unwrap();
        assert!(baggage.contains("team=payments"), "{baggage}");
        assert!(!baggage.contains("mallory"), "{baggage}");
        assert!(baggage.contains("gatehouse.user=alice"), "{baggage}");
        assert!(
            baggage.contains("gatehouse.commit=4f3b9c1d2e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c"),
            "{baggage}"
        );
        assert!(
            baggage.contains("gatehouse.repository=platform/checkout"),
            "{baggage}"
        );
    }

    #[test]
    fn without_facts_the_clients_gatehouse_baggage_is_still_removed() {
        let mut h = HeaderMap::new();
        h.insert(BAGGAGE, HeaderValue::from_static("gatehouse.commit=forged"));
        apply(&mut h, None, &RequestCommit::default());
        assert!(h.get(BAGGAGE).is_none());
        assert!(h.get(&COMMIT).is_none());
    }
}
