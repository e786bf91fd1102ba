//! The policy files security teams write, exactly as written (YAML). Unknown fields are
//! errors; nothing at request time sees these types.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub roles: BTreeMap<String, RoleDef>,
    #[serde(default)]
    pub rules: Vec<RuleDef>,
}

/// Who holds a role: any one listed fact about the caller is enough.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleDef {
    #[serde(default)]
    pub groups: Vec<String>,
    /// OAuth client ids (machine tokens).
    #[serde(default)]
    pub clients: Vec<String>,
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Exact addresses; only counted when the provider says the address is verified.
    #[serde(default)]
    pub emails: Vec<String>,
    /// Domains after `@`; only counted for verified addresses.
    #[serde(default)]
    pub email_domains: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EffectDef {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    pub route: String,
    #[serde(default)]
    pub effect: Option<EffectDef>,
    /// Roles the rule applies to; `"*"` is any authenticated caller.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// Roles the rule does not apply to.
    #[serde(default)]
    pub unless: Vec<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Globs over the request path (never the query).
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub gogs: Option<GogsDef>,
    #[serde(default)]
    pub git: Option<GitDef>,
    #[serde(default)]
    pub otlp: Option<OtlpDef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GogsRequestDef {
    Web,
    Api,
    Git,
}

/// What a Gogs request is (web page, API call, git) and which repository it touches.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GogsDef {
    #[serde(default)]
    pub requests: Option<Vec<GogsRequestDef>>,
    /// `owner/name` globs, case-insensitive.
    #[serde(default)]
    pub repos: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GitActionDef {
    Fetch,
    Push,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateDef {
    Create,
    Delete,
    Update,
}

/// git over HTTP: which action, on which repositories, touching which refs how.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitDef {
    #[serde(default)]
    pub actions: Option<Vec<GitActionDef>>,
    #[serde(default)]
    pub repos: Option<Vec<String>>,
    /// Ref globs, e.g. `refs/heads/main`, `refs/tags/**` (push only).
    #[serde(default)]
    pub refs: Option<Vec<String>>,
    #[serde(default)]
    pub updates: Option<Vec<UpdateDef>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalDef {
    Traces,
    Metrics,
    Logs,
}

/// OTLP exports: which signals, for which services (`service.name` of each resource).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpDef {
    #[serde(default)]
    pub signals: Option<Vec<SignalDef>>,
    #[serde(default)]
    pub services: Option<Vec<String>>,
}
