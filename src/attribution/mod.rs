//! Commit attribution: telemetry that reaches Lightstep through the gateway names the commit
//! behind the running code, its author and the person who pushed it.
//!
//! For each resource of an OTLP export whose `vcs.ref.head.revision` or `service.version`
//! names a commit the webhook store knows (full SHA or unambiguous prefix), or whose
//! `service.name` is mapped in `[[attribution.services]]` to a repository branch, the gateway
//! adds the OpenTelemetry VCS attributes and its own (`gatehouse.*`, listed in [`KEYS`]).
//! Resources it cannot attribute, and whole bodies with nothing to add, are forwarded byte for
//! byte. Attributes the sender set are kept unless `overwrite` is on.
//!
//! `protobuf.rs` and `json.rs` read each resource's attributes and splice the additions in
//! without touching the signal data; `lookup.rs` answers "which commit is this" from a cache
//! in front of the store.

pub mod deploy;
pub mod headers;
pub mod json;
pub mod lookup;
pub mod metrics;
pub mod protobuf;

use std::sync::Arc;

use crate::classify::otlp::{Encoding, OtlpError};
use crate::webhook::store::{CommitRecord, HookStore};

pub use lookup::CommitCache;

#[cfg(test)]
mod tests;

/// Every attribute the gateway may add, in the order it adds them.
pub const KEYS: [&str; 15] = [
    "vcs.ref.head.revision",
    "vcs.ref.head.name",
    "vcs.ref.head.type",
    "vcs.repository.url.full",
    "vcs.repository.name",
    "vcs.owner.name",
    "vcs.provider.name",
    "gatehouse.commit.author.name",
    "gatehouse.commit.author.email",
    "gatehouse.commit.title",
    "gatehouse.commit.time",
    "gatehouse.commit.url",
    "gatehouse.push.pusher",
    "gatehouse.push.verified_pusher",
    "enduser.id",
];

const ENDUSER_ID: usize = 14;

/// What one resource says about itself, as far as attribution cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFacts {
    pub service_name: Option<String>,
    pub service_version: Option<String>,
    pub revision: Option<String>,
    /// Bit `i` set when the resource already has `KEYS[i]`.
    pub present: u32,
}

impl EntryFacts {
    /// One attribute of the resource (`string` is its value when it is a string); returns
    /// its index in [`KEYS`] if it is one the gateway adds.
    pub fn note(&mut self, key: &str, string: Option<&str>) -> Option<usize> {
        match key {
            "service.name" => self.service_name = string.map(str::to_owned),
            "service.version" => self.service_version = string.map(str::to_owned),
            _ => {}
        }
        let i = KEYS.iter().position(|k| *k == key)?;
        self.present |= 1 << i;
        if i == 0 {
            self.revision = string.map(str::to_owned);
        }
        Some(i)
    }

    /// The commit this resource names: its revision, else its version, when either looks
    /// like a SHA (7 to 40 hex digits).
    pub fn named_commit(&self) -> Option<&str> {
        [self.revision.as_deref(), self.service_version.as_deref()]
            .into_iter()
            .flatten()
            .map(str::trim)
            .find(|v| looks_like_sha(v))
    }
}

pub fn looks_like_sha(v: &str) -> bool {
    (7..=40).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The attributes to add to one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Additions {
    /// `(index into KEYS, value)`, in `KEYS` order.
    pub pairs: Vec<(usize, Arc<str>)>,
    /// Existing attributes with these keys are removed first.
    pub overwrite: bool,
}

impl Additions {
    pub fn replaces(&self, key: usize) -> bool {
        self.overwrite && self.pairs.iter().any(|(k, _)| *k == key)
    }

    pub fn encoded_len(&self) -> usize {
        self.pairs
            .iter()
            .map(|(k, v)| protobuf::string_attribute_len(KEYS[*k], v))
            .sum()
    }

    /// The `KeyValue` fields of a `Resource` message.
    pub fn encode_protobuf(&self, out: &mut Vec<u8>) {
        for (k, v) in &self.pairs {
            protobuf::put_string_attribute(out, KEYS[*k], v);
        }
    }
}

/// The attribute values a commit gives, indexed like [`KEYS`] (`enduser.id` left empty: it
/// depends on the sender). Computed once per commit and cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitAttributes {
    pub sha: String,
    pub repo: String,
    pub author: String,
    pub values: Vec<(usize, Arc<str>)>,
}

impl CommitAttributes {
    pub fn from_record(c: &CommitRecord) -> CommitAttributes {
        let (ref_type, ref_name) = match c.git_ref.strip_prefix("refs/tags/") {
            Some(tag) => ("tag", tag),
            None => (
                "branch",
                c.git_ref.strip_prefix("refs/heads/").unwrap_or(&c.git_ref),
            ),
        };
        let (owner, name) = c.repo.split_once('/').unwrap_or(("", &c.repo));
        let url = c.repo_url.strip_suffix(".git").unwrap_or(&c.repo_url);
        let verified = c.verified_pusher.as_ref().map(|p| p.name().to_owned());
        let candidates: [(usize, Option<&str>); 14] = [
            (0, Some(&c.sha)),
            (1, Some(ref_name)),
            (2, Some(ref_type)),
            (3, Some(url)),
            (4, Some(name)),
            (5, Some(owner)),
            (6, Some("gogs")),
            (7, Some(&c.author_name)),
            (8, Some(&c.author_email)),
            (9, Some(&c.title)),
            (10, Some(&c.timestamp)),
            (11, Some(&c.url)),
            (12, Some(&c.pusher)),
            (13, verified.as_deref()),
        ];
        let values = candidates
            .into_iter()
            .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k, Arc::from(v))))
            .collect();
        CommitAttributes {
            sha: c.sha.clone(),
            repo: c.repo.clone(),
            author: if c.author_username.is_empty() {
                c.author_name.clone()
            } else {
                c.author_username.clone()
            },
            values,
        }
    }

    /// What to add to a resource that has the attributes in `present`.
    pub fn additions(
        &self,
        present: u32,
        enduser: Option<&str>,
        overwrite: bool,
    ) -> Option<Additions> {
        let keep = |k: usize| overwrite || present & (1 << k) == 0;
        let mut pairs: Vec<(usize, Arc<str>)> = self
            .values
            .iter()
            .filter(|(k, _)| keep(*k))
            .cloned()
            .collect();
        if let Some(u) = enduser.filter(|u| !u.is_empty())
            && keep(ENDUSER_ID)
        {
            pairs.push((ENDUSER_ID, Arc::from(u)));
        }
        (!pairs.is_empty()).then_some(Additions { pairs, overwrite })
    }
}

/// A `service.name` whose resources carry no version: attributed to the latest commit pushed
/// to `git_ref` of `repo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceMapping {
    pub service: String,
    pub repo: String,
    pub git_ref: String,
    /// `deployment.environment.name` for deployment markers.
    pub environment: Option<String>,
}

/// Settings from `[attribution]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributionConfig {
    pub enrich: bool,
    pub overwrite: bool,
    pub services: Vec<ServiceMapping>,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            enrich: true,
            overwrite: false,
            services: Vec::new(),
        }
    }
}

/// The result of enriching one export body.
#[derive(Debug, Default)]
pub struct Enriched {
    /// The new body; `None` when nothing was added (forward the original).
    pub body: Option<Vec<u8>>,
    /// The commits attributed, first seen first.
    pub commits: Vec<Arc<CommitAttributes>>,
    /// Resources that got attributes.
    pub resources: usize,
}

impl AttributionConfig {
    /// Adds commit attributes to the resources of a (decompressed) export body. Errors are
    /// malformed bodies, to be refused with 400.
    pub async fn enrich(
        &self,
        encoding: Encoding,
        signal: crate::classify::otlp::Signal,
        body: &[u8],
        cache: &CommitCache,
        enduser: Option<&str>,
    ) -> Result<Enriched, OtlpError> {
        if !self.enrich {
            return Ok(Enriched::default());
        }
        enum Scan<'b> {
            Protobuf(protobuf::Scanned),
            Json(json::Scanned<'b>),
        }
        let scanned = match encoding {
            Encoding::Protobuf => Scan::Protobuf(protobuf::scan(body)?),
            Encoding::Json => Scan::Json(json::scan(signal, body)?),
        };
        let facts = match &scanned {
            Scan::Protobuf(s) => s.facts(),
            Scan::Json(s) => s.facts(),
        };
        let wanted: Vec<Want> = facts.iter().map(|f| self.want(f)).collect();
        let found = cache.resolve(&wanted).await;
        let mut out = Enriched::default();
        let additions: Vec<Option<Additions>> = facts
            .iter()
            .zip(&found)
            .map(|(f, c)| {
                let c = c.as_ref()?;
                let a = c.additions(f.present, enduser, self.overwrite)?;
                if !out.commits.iter().any(|k| Arc::ptr_eq(k, c)) {
                    out.commits.push(c.clone());
                }
                out.resources += 1;
                Some(a)
            })
            .collect();
        out.body = match &scanned {
            Scan::Protobuf(s) => protobuf::splice(body, s, &additions),
            Scan::Json(s) => json::splice(body, s, &additions),
        };
        Ok(out)
    }

    /// The mapping for a service, if any (a handful of entries: a scan beats hashing).
    pub fn service(&self, name: &str) -> Option<&ServiceMapping> {
        self.services.iter().find(|s| s.service == name)
    }

    fn want(&self, f: &EntryFacts) -> Want {
        if let Some(sha) = f.named_commit() {
            return Want::Sha(sha.to_ascii_lowercase());
        }
        if f.service_version.is_some() || f.revision.is_some() {
            // A version that is not a SHA: the sender said what runs; do not guess.
            return Want::Nothing;
        }
        match f.service_name.as_deref().and_then(|s| self.service(s)) {
            Some(m) => Want::Head {
                repo: m.repo.clone(),
                git_ref: m.git_ref.clone(),
            },
            None => Want::Nothing,
        }
    }
}

/// What a resource asks the store for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Want {
    Nothing,
    Sha(String),
    Head { repo: String, git_ref: String },
}

/// Used by tests and benchmarks that have no store.
pub fn attributes_for(c: &CommitRecord) -> Arc<CommitAttributes> {
    Arc::new(CommitAttributes::from_record(c))
}

/// A store handle for [`CommitCache::new`].
pub type Store = Arc<dyn HookStore>;
