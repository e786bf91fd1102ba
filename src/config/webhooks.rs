//! The `[webhooks]` section: where Gogs deliveries come in, which secrets sign them, what is
//! kept, and where they are forwarded.

use std::path::PathBuf;
use std::time::Duration;

use super::Validator;
use super::file::{FileWebhookReceiver, FileWebhookSource, FileWebhooks};
use super::secret::SecretRef;

pub mod defaults {
    use std::time::Duration;
    pub const PATH: &str = "/.gatehouse/hooks/gogs";
    /// Gogs sends at most 10 commits per push; real payloads are tens of kilobytes.
    pub const MAX_BODY: u64 = 1024 * 1024;
    pub const REPLAY_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
    pub const COMMIT_RETENTION: Duration = Duration::from_secs(400 * 24 * 3600);
    pub const COMMIT_MAX: u64 = 5_000_000;
    /// With the backoff defaults: about an hour of doubling delays, then hourly, about 9 hours
    /// in all before a dead letter.
    pub const MAX_ATTEMPTS: u64 = 20;
    pub const RETRY_BASE: Duration = Duration::from_secs(1);
    pub const RETRY_MAX: Duration = Duration::from_secs(3600);
    pub const RECEIVER_TIMEOUT: Duration = Duration::from_secs(15);
}

/// Events a receiver can ask for (what Gogs sends).
pub const EVENTS: &[&str] = &[
    "push",
    "create",
    "delete",
    "release",
    "fork",
    "issues",
    "issue_comment",
    "pull_request",
];

#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// Where Gogs posts deliveries.
    pub path: String,
    /// The SQLite file holding deliveries seen, commits, version markers and the outbox;
    /// `None` when they live in Redis (`[redis]`).
    pub store: Option<PathBuf>,
    /// Checked before anything is hashed.
    pub max_body: u64,
    /// How long a delivery is remembered to recognise redeliveries and replays.
    pub replay_window: Duration,
    pub commit_retention: Duration,
    pub commit_max: u64,
    /// Attempts per receiver before a delivery becomes a dead letter.
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub sources: Vec<WebhookSource>,
    pub receivers: Vec<WebhookReceiver>,
}

/// Who may send deliveries: a Gogs instance, or some of its repositories.
#[derive(Debug, Clone)]
pub struct WebhookSource {
    pub name: String,
    /// `owner/name` globs (case-insensitive); the first source whose globs match a delivery's
    /// repository verifies it.
    pub repos: Vec<String>,
    pub secret: Option<SecretRef>,
    /// Accept deliveries without a signature (only for a source without a secret).
    pub allow_unsigned: bool,
}

/// Where verified deliveries are forwarded.
#[derive(Debug, Clone)]
pub struct WebhookReceiver {
    pub name: String,
    pub url: http::Uri,
    /// Empty: every event.
    pub events: Vec<String>,
    /// Empty: every repository.
    pub repos: Vec<String>,
    pub secret: SecretRef,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Validator<'_> {
    pub(super) fn webhooks(&mut self, w: &FileWebhooks, redis: bool) -> Option<WebhooksConfig> {
        let path = match &w.path {
            Some(p) => {
                let text = p.get_ref();
                if !text.starts_with('/')
                    || text.contains(['?', '#', ' ', '%'])
                    || crate::proxy::path::check_path(text).is_err()
                {
                    self.report(
                        p,
                        "webhooks.path",
                        format!("{text:?} is not a plain absolute path"),
                    );
                }
                text.clone()
            }
            None => defaults::PATH.to_string(),
        };
        let mut sources = Vec::new();
        for (i, s) in w.sources.iter().enumerate() {
            if let Some(src) = self.webhook_source(i, s) {
                if sources.iter().any(|o: &WebhookSource| o.name == src.name) {
                    self.report(
                        &s.name,
                        &format!("webhooks.sources[{i}].name"),
                        format!("source name {:?} is used twice", src.name),
                    );
                }
                sources.push(src);
            }
        }
        match (&w.store, redis) {
            (Some(s), true) => self.report(
                s,
                "webhooks.store",
                "with [redis], deliveries, commits and the outbox live in Redis: remove store",
            ),
            (None, false) => self.report_unplaced(
                "webhooks.store",
                "store is required (the SQLite file for deliveries, commits and the outbox), unless [redis] is configured",
            ),
            _ => {}
        }
        if w.sources.is_empty() {
            self.report_unplaced(
                "webhooks.sources",
                "no [[webhooks.sources]]: every delivery would be refused; add one with secret_env or secret_file",
            );
        }
        let mut receivers = Vec::new();
        for (i, r) in w.receivers.iter().enumerate() {
            if let Some(rcv) = self.webhook_receiver(i, r) {
                if receivers
                    .iter()
                    .any(|o: &WebhookReceiver| o.name == rcv.name)
                {
                    self.report(
                        &r.name,
                        &format!("webhooks.receivers[{i}].name"),
                        format!("receiver name {:?} is used twice", rcv.name),
                    );
                }
                receivers.push(rcv);
            }
        }
        let max_attempts = self.count(
            &w.max_attempts,
            "webhooks.max_attempts",
            100,
            defaults::MAX_ATTEMPTS,
        ) as u32;
        Some(WebhooksConfig {
            path,
            store: w.store.as_ref().map(|s| self.path(s.get_ref())),
            max_body: self.size(&w.max_body, "webhooks.max_body", defaults::MAX_BODY),
            replay_window: self.duration(
                &w.replay_window,
                "webhooks.replay_window",
                defaults::REPLAY_WINDOW,
            ),
            commit_retention: self.duration(
                &w.commit_retention,
                "webhooks.commit_retention",
                defaults::COMMIT_RETENTION,
            ),
            commit_max: self.count(
                &w.commit_max,
                "webhooks.commit_max",
                i64::MAX,
                defaults::COMMIT_MAX,
            ),
            max_attempts: max_attempts.max(1),
            retry_base: self.duration(&w.retry_base, "webhooks.retry_base", defaults::RETRY_BASE),
            retry_max: self.duration(&w.retry_max, "webhooks.retry_max", defaults::RETRY_MAX),
            sources,
            receivers,
        })
    }

    fn repo_globs(
        &mut self,
        repos: &Option<super::Spanned<Vec<String>>>,
        key: &str,
    ) -> Vec<String> {
        let Some(list) = repos else {
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.report(
                list,
                key,
                "an empty list matches nothing; leave it out to match every repository",
            );
        }
        for g in list.get_ref() {
            if let Err(e) = crate::webhook::glob(g) {
                self.report(list, key, format!("{g:?}: {e}"));
            }
        }
        list.get_ref().clone()
    }

    fn webhook_source(&mut self, i: usize, s: &FileWebhookSource) -> Option<WebhookSource> {
        let key = |f: &str| format!("webhooks.sources[{i}].{f}");
        let name = s.name.get_ref().clone();
        if !valid_name(&name) {
            self.report(
                &s.name,
                &key("name"),
                format!("{name:?}: use 1 to 64 lower-case letters, digits, '-' and '_'"),
            );
        }
        let repos = self.repo_globs(&s.repos, &key("repos"));
        let allow_unsigned = s.allow_unsigned.as_ref().is_some_and(|a| *a.get_ref());
        let secret = if s.secret_env.is_none() && s.secret_file.is_none() && allow_unsigned {
            None
        } else {
            if let Some(a) = &s.allow_unsigned
                && *a.get_ref()
            {
                self.report(
                    a,
                    &key("allow_unsigned"),
                    "only for a source without a secret: with a secret, every delivery must be signed",
                );
            }
            let secret = self.secret(&s.secret_env, &s.secret_file, &key("secret"), Some(&s.name));
            secret.as_ref()?;
            secret
        };
        Some(WebhookSource {
            name,
            repos,
            secret,
            allow_unsigned,
        })
    }

    fn webhook_receiver(&mut self, i: usize, r: &FileWebhookReceiver) -> Option<WebhookReceiver> {
        let key = |f: &str| format!("webhooks.receivers[{i}].{f}");
        let name = r.name.get_ref().clone();
        if !valid_name(&name) {
            self.report(
                &r.name,
                &key("name"),
                format!("{name:?}: use 1 to 64 lower-case letters, digits, '-' and '_'"),
            );
        }
        let url = match r.url.get_ref().parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                Some(u)
            }
            Ok(_) => {
                self.report(
                    &r.url,
                    &key("url"),
                    format!(
                        "{:?}: an absolute http:// or https:// URL is required",
                        r.url.get_ref()
                    ),
                );
                None
            }
            Err(e) => {
                self.report(&r.url, &key("url"), format!("{:?}: {e}", r.url.get_ref()));
                None
            }
        };
        let mut events = Vec::new();
        if let Some(list) = &r.events {
            if list.get_ref().is_empty() {
                self.report(
                    list,
                    &key("events"),
                    "an empty list forwards nothing; leave it out to forward every event",
                );
            }
            for e in list.get_ref() {
                if !EVENTS.contains(&e.as_str()) {
                    self.report(
                        list,
                        &key("events"),
                        format!("{e:?} is not a Gogs event (allowed: {})", EVENTS.join(", ")),
                    );
                }
                events.push(e.clone());
            }
        }
        let repos = self.repo_globs(&r.repos, &key("repos"));
        let secret = self.secret(&r.secret_env, &r.secret_file, &key("secret"), Some(&r.name));
        let timeout = self.duration(&r.timeout, &key("timeout"), defaults::RECEIVER_TIMEOUT);
        Some(WebhookReceiver {
            name,
            url: url?,
            events,
            repos,
            secret: secret?,
            ca_file: r.ca_file.as_ref().map(|f| self.path(f.get_ref())),
            timeout,
        })
    }
}
