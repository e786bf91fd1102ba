//! One Gogs delivery, from bytes to a decision: which source covers it, whether its
//! signature holds, what it says, and what is recorded and queued. No HTTP types here, so the
//! same path is benchmarked and fuzzed.

use aws_lc_rs::digest;

use super::Hooks;
use super::event::{self, Event};
use super::signature::{self, SignatureError};
use super::store::{
    CommitRecord, Delivery, HookStore, Marker, NewForward, Pusher, Received, StoreError,
};

/// What came in.
pub struct Inbound<'a> {
    /// `X-Gogs-Event`.
    pub event: Option<&'a [u8]>,
    /// `X-Gogs-Delivery`.
    pub delivery: Option<&'a [u8]>,
    /// `X-Gogs-Signature`.
    pub signature: Option<&'a [u8]>,
    pub content_type: Option<&'a [u8]>,
    pub body: &'a [u8],
    pub now_ms: i64,
}

/// Why a delivery was refused, with the status Gogs gets.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Signature(#[from] SignatureError),
    #[error("no webhook source covers repository {0:?}")]
    NoSource(String),
    #[error("delivery {0} was seen before with a different body")]
    Conflict(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::BadRequest(_) => 400,
            Rejection::Signature(_) => 401,
            Rejection::NoSource(_) => 403,
            Rejection::Conflict(_) => 409,
            Rejection::Store(_) => 503,
        }
    }
}

/// What was done with an accepted delivery.
#[derive(Debug)]
pub struct Receipt {
    pub event: String,
    pub delivery: String,
    pub source: String,
    pub repository: String,
    /// `(ref, before, after)` of a push.
    pub push: Option<(String, String, String)>,
    pub commits: usize,
    pub outcome: Received,
    /// Receivers the delivery was queued for.
    pub forwarded_to: Vec<String>,
    /// Whether a signature was checked (false only for sources allowed to be unsigned).
    pub signed: bool,
}

impl Receipt {
    pub fn verified_pusher(&self) -> Option<&Pusher> {
        match &self.outcome {
            Received::New {
                verified_pusher, ..
            } => verified_pusher.as_ref(),
            _ => None,
        }
    }
}

fn header_text<'a>(v: Option<&'a [u8]>, name: &str) -> Result<&'a str, Rejection> {
    let v = v.ok_or_else(|| Rejection::BadRequest(format!("no {name} header")))?;
    let text = std::str::from_utf8(v)
        .ok()
        .filter(|t| {
            !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or_else(|| Rejection::BadRequest(format!("{name} is not a plain token")))?;
    Ok(text)
}

/// The JSON of a delivery: the body itself, or the `payload` field of a form.
pub fn payload<'a>(
    content_type: Option<&[u8]>,
    body: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, Rejection> {
    let ct = content_type
        .and_then(|c| std::str::from_utf8(c).ok())
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match ct.as_str() {
        "application/json" => Ok(std::borrow::Cow::Borrowed(body)),
        "application/x-www-form-urlencoded" => {
            let mut found = None;
            for pair in body.split(|b| *b == b'&') {
                let (name, value) = match pair.iter().position(|b| *b == b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, &[][..]),
                };
                if name == b"payload" {
                    if found.is_some() {
                        return Err(Rejection::BadRequest(
                            "the form has more than one payload field".into(),
                        ));
                    }
                    found = Some(form_decode(value).ok_or_else(|| {
                        Rejection::BadRequest("the payload field is not valid URL encoding".into())
                    })?);
                }
            }
            found
                .map(std::borrow::Cow::Owned)
                .ok_or_else(|| Rejection::BadRequest("the form has no payload field".into()))
        }
        "" => Err(Rejection::BadRequest("no Content-Type".into())),
        other => Err(Rejection::BadRequest(format!(
            "Content-Type {other:?} is neither application/json nor application/x-www-form-urlencoded"
        ))),
    }
}

fn form_decode(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = v.get(i + 1..i + 3)?;
                let s = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(s, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

fn person(p: &Option<event::Person>) -> (String, String, String) {
    p.as_ref()
        .map(|p| (p.name.clone(), p.email.clone(), p.username.clone()))
        .unwrap_or_default()
}

/// A delivery whose signature held and whose payload parsed, ready to record.
pub struct Verified {
    pub event: String,
    pub delivery: String,
    pub source: String,
    pub repository: String,
    /// `(ref, before, after)` of a push.
    pub push: Option<(String, String, String)>,
    pub signed: bool,
    json: Vec<u8>,
    body_sha: String,
    commits: Vec<CommitRecord>,
    markers: Vec<Marker>,
    forwards: Vec<NewForward>,
}

impl Verified {
    pub fn commit_count(&self) -> usize {
        self.commits.len()
    }

    /// The tags and releases the delivery creates.
    pub fn markers(&self) -> &[Marker] {
        &self.markers
    }
}

/// Picks the source, checks the signature and parses the payload. Records nothing.
pub fn verify(hooks: &Hooks, inbound: &Inbound<'_>) -> Result<Verified, Rejection> {
    let event_name = header_text(inbound.event, "X-Gogs-Event")?;
    let delivery = header_text(inbound.delivery, "X-Gogs-Delivery")?;
    let json = payload(inbound.content_type, inbound.body)?;

    // The source is chosen by repository before the signature can be checked; nothing read
    // here is trusted until it is.
    let repository = event::repository_name(&json)
        .map_err(|e| Rejection::BadRequest(format!("the payload is not JSON: {e}")))?
        .unwrap_or_default();
    let source = hooks
        .source_for(&repository)
        .ok_or_else(|| Rejection::NoSource(repository.clone()))?;
    let signed = match &source.secret {
        Some(secret) => {
            signature::verify_gogs(secret.expose().as_bytes(), &json, inbound.signature)?;
            true
        }
        None => false,
    };

    let parsed = event::parse(event_name, &json).map_err(|e| {
        Rejection::BadRequest(format!("the {event_name} payload cannot be read: {e}"))
    })?;
    let mut commits = Vec::new();
    let mut markers = Vec::new();
    let mut push = None;
    match &parsed {
        Event::Push(p) => {
            if !event::is_sha(&p.after) || !event::is_sha(&p.before) {
                return Err(Rejection::BadRequest(
                    "before and after must be full SHAs".into(),
                ));
            }
            let pusher = p
                .pusher
                .as_ref()
                .map(|u| u.name().to_string())
                .unwrap_or_default();
            for c in &p.commits {
                if !event::is_sha(&c.id) {
                    return Err(Rejection::BadRequest(format!(
                        "commit id {:?} is not a SHA",
                        c.id
                    )));
                }
                let (author_name, author_email, author_username) = person(&c.author);
                let (committer_name, committer_email, committer_username) = person(&c.committer);
                commits.push(CommitRecord {
                    sha: c.id.clone(),
                    repo: p.repository.full_name.clone(),
                    repo_url: p.repository.html_url.clone(),
                    git_ref: p.git_ref.clone(),
                    before: p.before.clone(),
                    after: p.after.clone(),
                    author_name,
                    author_email,
                    author_username,
                    committer_name,
                    committer_email,
                    committer_username,
                    title: c.title().to_string(),
                    timestamp: c.timestamp.clone(),
                    url: c.url.clone(),
                    pusher: pusher.clone(),
                    verified_pusher: None,
                    markers: Vec::new(),
                });
            }
            push = Some((p.git_ref.clone(), p.before.clone(), p.after.clone()));
        }
        Event::Create(c) if c.ref_type == "tag" => markers.push(Marker {
            repo: c.repository.full_name.clone(),
            name: c.git_ref.clone(),
            kind: "tag".into(),
            sha: Some(c.sha.clone()).filter(|s| event::is_sha(s)),
        }),
        Event::Release(r) => markers.push(Marker {
            repo: r.repository.full_name.clone(),
            name: r.release.tag_name.clone(),
            kind: "release".into(),
            sha: Some(r.release.target_commitish.clone()).filter(|s| event::is_sha(s)),
        }),
        _ => {}
    }
    let forwards = hooks
        .receivers_for(parsed.name(), &repository)
        .map(|name| NewForward {
            receiver: name.to_string(),
        })
        .collect();
    let body_sha = crate::audit::chain::hex(digest::digest(&digest::SHA256, &json).as_ref());
    Ok(Verified {
        event: parsed.name().to_string(),
        delivery: delivery.to_string(),
        source: source.name.clone(),
        repository,
        push,
        signed,
        json: json.into_owned(),
        body_sha,
        commits,
        markers,
        forwards,
    })
}

/// Records a verified delivery: once, however often it arrives.
pub fn record(
    store: &dyn HookStore,
    v: Verified,
    now_ms: i64,
    replay_window_ms: i64,
) -> Result<Receipt, Rejection> {
    let commits = v.commits.len();
    let outcome = store.receive(&Delivery {
        id: &v.delivery,
        body_sha: &v.body_sha,
        event: &v.event,
        repo: &v.repository,
        source: &v.source,
        body: &v.json,
        pushed: v
            .push
            .as_ref()
            .map(|(r, _, after)| (v.repository.as_str(), r.as_str(), after.as_str())),
        commits: &v.commits,
        markers: &v.markers,
        forwards: &v.forwards,
        now_ms,
        replay_window_ms,
    })?;
    if outcome == Received::Conflict {
        return Err(Rejection::Conflict(v.delivery));
    }
    let (forwarded_to, commits) = match &outcome {
        Received::New { .. } => (
            v.forwards.into_iter().map(|f| f.receiver).collect(),
            commits,
        ),
        _ => (Vec::new(), 0),
    };
    Ok(Receipt {
        event: v.event,
        delivery: v.delivery,
        source: v.source,
        repository: v.repository,
        push: v.push,
        commits,
        outcome,
        forwarded_to,
        signed: v.signed,
    })
}

/// [`verify`] then [`record`].
pub fn receive(
    hooks: &Hooks,
    store: &dyn HookStore,
    inbound: &Inbound<'_>,
) -> Result<Receipt, Rejection> {
    let v = verify(hooks, inbound)?;
    record(
        store,
        v,
        inbound.now_ms,
        hooks.config.replay_window.as_millis() as i64,
    )
}
