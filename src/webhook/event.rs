//! Gogs webhook payloads, typed. Unknown fields are ignored and optional ones may be missing
//! or `null` (`added`/`removed`/`modified` are `null` on some pushes, `author.username` is
//! empty when Gogs knows no user with that email).

use serde::{Deserialize, Deserializer};

/// A string that may be absent or `null`.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// A list that may be absent or `null`.
fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct User {
    #[serde(default, deserialize_with = "text")]
    pub username: String,
    #[serde(default, deserialize_with = "text")]
    pub login: String,
    #[serde(default, deserialize_with = "text")]
    pub full_name: String,
    #[serde(default, deserialize_with = "text")]
    pub email: String,
}

impl User {
    /// The Gogs username (`username`, or `login` on older versions).
    pub fn name(&self) -> &str {
        if self.username.is_empty() {
            &self.login
        } else {
            &self.username
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Person {
    #[serde(default, deserialize_with = "text")]
    pub name: String,
    #[serde(default, deserialize_with = "text")]
    pub email: String,
    #[serde(default, deserialize_with = "text")]
    pub username: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Repository {
    #[serde(default, deserialize_with = "text")]
    pub full_name: String,
    #[serde(default, deserialize_with = "text")]
    pub html_url: String,
    #[serde(default, deserialize_with = "text")]
    pub default_branch: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Commit {
    #[serde(deserialize_with = "text")]
    pub id: String,
    #[serde(default, deserialize_with = "text")]
    pub message: String,
    #[serde(default, deserialize_with = "text")]
    pub url: String,
    #[serde(default)]
    pub author: Option<Person>,
    #[serde(default)]
    pub committer: Option<Person>,
    #[serde(default, deserialize_with = "list")]
    pub added: Vec<String>,
    #[serde(default, deserialize_with = "list")]
    pub removed: Vec<String>,
    #[serde(default, deserialize_with = "list")]
    pub modified: Vec<String>,
    #[serde(default, deserialize_with = "text")]
    pub timestamp: String,
}

impl Commit {
    /// The first line of the message.
    pub fn title(&self) -> &str {
        self.message.lines().next().unwrap_or("").trim_end()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Push {
    #[serde(rename = "ref", deserialize_with = "text")]
    pub git_ref: String,
    #[serde(deserialize_with = "text")]
    pub before: String,
    #[serde(deserialize_with = "text")]
    pub after: String,
    #[serde(default, deserialize_with = "text")]
    pub compare_url: String,
    #[serde(default, deserialize_with = "list")]
    pub commits: Vec<Commit>,
    pub repository: Repository,
    #[serde(default)]
    pub pusher: Option<User>,
    #[serde(default)]
    pub sender: Option<User>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Create {
    #[serde(rename = "ref", deserialize_with = "text")]
    pub git_ref: String,
    #[serde(deserialize_with = "text")]
    pub ref_type: String,
    #[serde(default, deserialize_with = "text")]
    pub sha: String,
    pub repository: Repository,
    #[serde(default)]
    pub sender: Option<User>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Delete {
    #[serde(rename = "ref", deserialize_with = "text")]
    pub git_ref: String,
    #[serde(deserialize_with = "text")]
    pub ref_type: String,
    #[serde(default, deserialize_with = "text")]
    pub pusher_type: String,
    pub repository: Repository,
    #[serde(default)]
    pub sender: Option<User>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReleaseInfo {
    #[serde(deserialize_with = "text")]
    pub tag_name: String,
    #[serde(default, deserialize_with = "text")]
    pub target_commitish: String,
    #[serde(default, deserialize_with = "text")]
    pub name: String,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub prerelease: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Release {
    #[serde(default, deserialize_with = "text")]
    pub action: String,
    pub release: ReleaseInfo,
    pub repository: Repository,
    #[serde(default)]
    pub sender: Option<User>,
}

/// Only what picks the source, read before the signature is checked.
#[derive(Debug, Default, Deserialize)]
struct RepositoryOnly {
    #[serde(default)]
    repository: Option<Repository>,
}

#[derive(Debug, Clone)]
pub enum Event {
    Push(Box<Push>),
    Create(Create),
    Delete(Delete),
    Release(Release),
    /// Accepted and forwarded untouched.
    Other {
        name: String,
    },
}

impl Event {
    pub fn name(&self) -> &str {
        match self {
            Event::Push(_) => "push",
            Event::Create(_) => "create",
            Event::Delete(_) => "delete",
            Event::Release(_) => "release",
            Event::Other { name } => name,
        }
    }
}

/// The `repository.full_name` of a payload, when it has one.
pub fn repository_name(json: &[u8]) -> Result<Option<String>, serde_json::Error> {
    let r: RepositoryOnly = serde_json::from_slice(json)?;
    Ok(r.repository.map(|r| r.full_name).filter(|n| !n.is_empty()))
}

/// Parses a payload of event `name` (`X-Gogs-Event`).
pub fn parse(name: &str, json: &[u8]) -> Result<Event, serde_json::Error> {
    Ok(match name {
        "push" => Event::Push(Box::new(serde_json::from_slice(json)?)),
        "create" => Event::Create(serde_json::from_slice(json)?),
        "delete" => Event::Delete(serde_json::from_slice(json)?),
        "release" => Event::Release(serde_json::from_slice(json)?),
        other => {
            // Still JSON: nothing unparsable is recorded or forwarded.
            serde_json::from_slice::<serde::de::IgnoredAny>(json)?;
            Event::Other {
                name: other.to_string(),
            }
        }
    })
}

/// A full commit SHA: 40 lower-case hex digits.
pub fn is_sha(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_and_missing_optional_fields_are_tolerated() {
        let json = br#"{"ref":"refs/heads/x","before":"0000000000000000000000000000000000000000",
            "after":"1111111111111111111111111111111111111111","compare_url":null,
            "commits":[{"id":"1111111111111111111111111111111111111111","message":"t\n\nbody",
            "author":{"name":"A","email":"a@x","username":""},"added":null,"removed":null,
            "modified":null,"timestamp":"2026-11-26T10:00:00Z","extra":1}],
            "repository":{"full_name":"Platform/App","stars_count":3},"pusher":null}"#;
        let Event::Push(p) = parse("push", json).unwrap() else {
            panic!("not a push")
        };
        assert_eq!(p.commits[0].title(), "t");
        assert!(p.commits[0].added.is_empty());
        assert_eq!(p.commits[0].author.as_ref().unwrap().username, "");
        assert!(p.pusher.is_none());
        assert_eq!(p.repository.full_name, "Platform/App");
    }

    #[test]
    fn the_shared_test_vector_parses() {
        let json = include_bytes!("../../tests/data/gogs/push.json");
        let Event::Push(p) = parse("push", json).unwrap() else {
            panic!("not a push")
        };
        assert!(is_sha(&p.after));
        assert!(!p.commits.is_empty());
    }

    #[test]
    fn other_events_must_still_be_json() {
        assert!(parse("issues", b"{\"action\":\"opened\"}").is_ok());
        assert!(parse("issues", b"{\"action\":").is_err());
        assert!(parse("push", b"{}").is_err());
    }
}
