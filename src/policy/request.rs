//! What the policy engine sees of a request: plain values, no HTTP types, so evaluation is a
//! pure function that can be tested and replayed (from the command line or the audit log).

use serde::{Deserialize, Serialize};

/// What a Gogs request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GogsAction {
    Web,
    Api,
    GitFetch,
    GitPush,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateKind {
    Create,
    Delete,
    Update,
}

/// One ref a push changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefChange {
    pub name: String,
    pub kind: UpdateKind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub old: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub new: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

/// The typed resource a request touches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Resource {
    #[default]
    None,
    Gogs {
        action: GogsAction,
        /// `owner/name`, lower case.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repo: Option<String>,
        /// Ref updates of a push (empty for the push advertisement).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        refs: Vec<RefChange>,
    },
    Otlp {
        signal: Signal,
        #[serde(default)]
        services: Vec<String>,
    },
}

/// The facts about the caller that roles are made of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub sub: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
}

impl From<&crate::identity::Identity> for Subject {
    fn from(i: &crate::identity::Identity) -> Self {
        Subject {
            sub: i.subject.clone(),
            groups: i.groups.clone(),
            client_id: i.client_id.clone(),
            email: i.email.clone(),
            email_verified: i.email_verified,
        }
    }
}

/// A request as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRequest {
    pub route: String,
    pub method: String,
    /// Normalised path, without the query.
    pub path: String,
    #[serde(default)]
    pub resource: Resource,
}
