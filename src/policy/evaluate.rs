//! Evaluation: a pure function of (caller, request) over a compiled policy.
//!
//! Deny wins over allow; no matching allow means deny; a rule's `unless` roles exempt callers
//! from it. A push is judged ref by ref and an OTLP export service by service: the request is
//! allowed only if every ref (every service) is, and the first refusal names its rule.

use std::cell::RefCell;
use std::sync::Arc;

use serde::Serialize;

use super::compile::{
    API, Bits, CompiledPolicy, CompiledRule, Effect, FETCH, PUSH, PatternSet, Roles, RouteRules,
    WEB,
};
use super::request::{GogsAction, PolicyRequest, Resource, Signal, UpdateKind};

/// The caller facts roles are made of, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct SubjectRef<'a> {
    pub sub: &'a str,
    pub groups: &'a [String],
    pub client_id: Option<&'a str>,
    pub email: Option<&'a str>,
    pub email_verified: bool,
}

impl<'a> From<&'a crate::identity::Identity> for SubjectRef<'a> {
    fn from(i: &'a crate::identity::Identity) -> Self {
        SubjectRef {
            sub: &i.subject,
            groups: &i.groups,
            client_id: i.client_id.as_deref(),
            email: i.email.as_deref(),
            email_verified: i.email_verified,
        }
    }
}

impl<'a> From<&'a super::request::Subject> for SubjectRef<'a> {
    fn from(s: &'a super::request::Subject) -> Self {
        SubjectRef {
            sub: &s.sub,
            groups: &s.groups,
            client_id: s.client_id.as_deref(),
            email: s.email.as_deref(),
            email_verified: s.email_verified,
        }
    }
}

/// The outcome for one ref or service of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemDecision {
    /// The ref name or service (empty for a request judged as a whole).
    pub item: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    pub reason: String,
}

/// What the policy decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The rule that decided (the first refusing one when denied), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    pub reasons: Vec<String>,
    /// Per-ref or per-service outcomes, when the request had several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemDecision>,
}

impl Decision {
    pub fn effect(&self) -> &'static str {
        if self.allowed { "allow" } else { "deny" }
    }
}

/// The caller's roles.
pub fn roles_of(policy: &CompiledPolicy, s: SubjectRef<'_>) -> Roles {
    let idx = &policy.roles;
    let mut roles = Roles::default();
    for g in s.groups {
        if let Some(r) = idx.by_group.get(g) {
            roles.union(r);
        }
    }
    if let Some(r) = s.client_id.and_then(|c| idx.by_client.get(c)) {
        roles.union(r);
    }
    if let Some(r) = idx.by_subject.get(s.sub) {
        roles.union(r);
    }
    if s.email_verified
        && let Some(email) = s.email
    {
        let lower = email.to_ascii_lowercase();
        if let Some(r) = idx.by_email.get(&lower) {
            roles.union(r);
        }
        if let Some(r) = lower
            .rsplit_once('@')
            .and_then(|(_, d)| idx.by_domain.get(d))
        {
            roles.union(r);
        }
    }
    roles
}

/// Role names for display.
pub fn role_names(policy: &CompiledPolicy, roles: &Roles) -> Vec<String> {
    policy
        .roles
        .names
        .iter()
        .enumerate()
        .filter(|(i, _)| roles.contains(*i))
        .map(|(_, n)| n.clone())
        .collect()
}

thread_local! {
    static SCRATCH: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

fn matched(set: &PatternSet, candidate: &str) -> Bits {
    let mut bits = Bits::with_capacity(set.len);
    if set.len == 0 {
        return bits;
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        set.set.matches_into(candidate, &mut s);
        for i in s.iter() {
            bits.set(*i);
        }
    });
    bits
}

/// The facts of a request every rule is tested against, computed once (the path only if a
/// candidate rule looks at it).
struct Facts<'a> {
    roles: Roles,
    authenticated: bool,
    method: u16,
    path: &'a str,
    path_set: &'a PatternSet,
    paths: std::cell::OnceCell<Bits>,
    action: u8,
    repos: Option<Bits>,
    signal: u8,
}

/// One thing being judged: a whole request, one ref of a push, or one service of an export.
enum Item<'r> {
    Whole,
    /// A ref and how it changes; its pattern matches are computed only if a rule asks.
    Ref {
        name: &'r str,
        set: &'r PatternSet,
        bits: std::cell::OnceCell<Bits>,
        kind: u8,
    },
    Service {
        name: &'r str,
        set: &'r PatternSet,
        bits: std::cell::OnceCell<Bits>,
    },
}

impl Item<'_> {
    fn bits(&self) -> Option<&Bits> {
        match self {
            Item::Whole => None,
            Item::Ref {
                name, set, bits, ..
            }
            | Item::Service { name, set, bits } => Some(bits.get_or_init(|| matched(set, name))),
        }
    }
}

impl Item<'_> {
    fn label(&self) -> String {
        match self {
            Item::Whole => String::new(),
            Item::Ref { name, .. } | Item::Service { name, .. } => name.to_string(),
        }
    }
}

/// Whether a rule matches; if not, the first condition that failed.
fn check(rule: &CompiledRule, f: &Facts<'_>, item: &Item<'_>) -> Result<(), &'static str> {
    match &rule.roles {
        Some(r) if !r.intersects(&f.roles) => return Err("caller has none of its roles"),
        None if !f.authenticated => return Err("caller is not authenticated"),
        _ => {}
    }
    if rule.unless.intersects(&f.roles) {
        return Err("caller holds an `unless` role");
    }
    if rule.methods.is_some_and(|m| m & f.method == 0) {
        return Err("method differs");
    }
    if let Some(p) = &rule.paths
        && !p.intersects(f.paths.get_or_init(|| matched(f.path_set, f.path)))
    {
        return Err("path does not match");
    }
    if let Some(a) = rule.actions
        && a & f.action == 0
    {
        return Err("request kind differs");
    }
    if let Some(r) = &rule.repos {
        match &f.repos {
            Some(m) if r.intersects(m) => {}
            _ => return Err("repository does not match"),
        }
    }
    if let Some(s) = rule.signals
        && s & f.signal == 0
    {
        return Err("signal differs");
    }
    // Ref and service conditions: an allow rule may match a request that names none yet (the
    // push advertisement, an empty export); a deny rule needs a concrete ref or service.
    match item {
        Item::Ref { kind, .. } => {
            if let Some(r) = &rule.refs
                && !item.bits().is_some_and(|b| r.intersects(b))
            {
                return Err("ref does not match");
            }
            if rule.updates.is_some_and(|u| u & kind == 0) {
                return Err("update kind differs");
            }
        }
        Item::Service { .. } => {
            if let Some(s) = &rule.services
                && !item.bits().is_some_and(|b| s.intersects(b))
            {
                return Err("service does not match");
            }
        }
        Item::Whole => {
            if (rule.refs.is_some() || rule.updates.is_some() || rule.services.is_some())
                && rule.effect == Effect::Deny
            {
                return Err("no ref or service to judge yet");
            }
        }
    }
    Ok(())
}

fn facts<'a>(
    policy: &CompiledPolicy,
    rules: &'a RouteRules,
    caller: Option<SubjectRef<'_>>,
    req: &'a PolicyRequest,
) -> Facts<'a> {
    let (action, repo, signal) = match &req.resource {
        Resource::Gogs { action, repo, .. } => (
            match action {
                GogsAction::Web => WEB,
                GogsAction::Api => API,
                GogsAction::GitFetch => FETCH,
                GogsAction::GitPush => PUSH,
            },
            repo.as_deref(),
            0,
        ),
        Resource::Otlp { signal, .. } => (
            0,
            None,
            match signal {
                Signal::Traces => 1,
                Signal::Metrics => 2,
                Signal::Logs => 4,
            },
        ),
        Resource::None => (0, None, 0),
    };
    Facts {
        roles: caller.map(|c| roles_of(policy, c)).unwrap_or_default(),
        authenticated: caller.is_some(),
        method: super::compile::method_bit(&req.method),
        path: &req.path,
        path_set: &rules.paths,
        paths: std::cell::OnceCell::new(),
        action,
        repos: repo.map(|r| matched(&rules.repos, r)),
        signal,
    }
}

fn items<'r>(rules: &'r RouteRules, req: &'r PolicyRequest) -> Vec<Item<'r>> {
    match &req.resource {
        Resource::Gogs { refs, .. } if !refs.is_empty() => refs
            .iter()
            .map(|r| Item::Ref {
                name: &r.name,
                set: &rules.refs,
                bits: std::cell::OnceCell::new(),
                kind: match r.kind {
                    UpdateKind::Create => 1,
                    UpdateKind::Delete => 2,
                    UpdateKind::Update => 4,
                },
            })
            .collect(),
        Resource::Otlp { services, .. } if !services.is_empty() => services
            .iter()
            .map(|s| Item::Service {
                name: s,
                set: &rules.services,
                bits: std::cell::OnceCell::new(),
            })
            .collect(),
        _ => vec![Item::Whole],
    }
}

/// Rules that can match this request, in file order.
fn candidates(rules: &RouteRules, f: &Facts<'_>) -> Vec<u32> {
    let idx = &rules.index;
    let mut out: Vec<u32> = idx.always.clone();
    if let Some(repos) = &f.repos {
        for p in repos.ones() {
            if let Some(list) = idx.by_repo.get(p) {
                out.extend_from_slice(list);
            }
        }
    }
    for (role, list) in idx.by_role.iter().enumerate() {
        if !list.is_empty() && f.roles.contains(role) {
            out.extend_from_slice(list);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Decides one request.
pub fn evaluate(
    policy: &CompiledPolicy,
    caller: Option<SubjectRef<'_>>,
    req: &PolicyRequest,
) -> Decision {
    let Some(rules) = policy.routes.get(&req.route) else {
        return Decision {
            allowed: false,
            rule: None,
            reasons: vec![format!(
                "no policy covers route {:?}: denied by default",
                req.route
            )],
            items: Vec::new(),
        };
    };
    let f = facts(policy, rules, caller, req);
    let candidates = candidates(rules, &f);
    let items = items(rules, req);
    let mut outcomes = Vec::with_capacity(items.len());
    for item in &items {
        // Candidates are in file order: the first deny and the first allow that match decide.
        let mut first_deny: Option<&CompiledRule> = None;
        let mut first_allow: Option<&CompiledRule> = None;
        for &i in &candidates {
            let r = &rules.rules[i as usize];
            let wanted = match r.effect {
                Effect::Deny => first_deny.is_none(),
                Effect::Allow => first_allow.is_none() && first_deny.is_none(),
            };
            if wanted && check(r, &f, item).is_ok() {
                match r.effect {
                    Effect::Deny => {
                        first_deny = Some(r);
                        break;
                    }
                    Effect::Allow => first_allow = Some(r),
                }
            }
        }
        let outcome = if let Some(deny) = first_deny {
            ItemDecision {
                item: item.label(),
                allowed: false,
                rule: Some(deny.id.clone()),
                reason: match &deny.description {
                    Some(d) => format!("denied by policy {}: {d}", deny.id),
                    None => format!("denied by policy {}", deny.id),
                },
            }
        } else if let Some(allow) = first_allow {
            ItemDecision {
                item: item.label(),
                allowed: true,
                rule: Some(allow.id.clone()),
                reason: format!("allowed by policy {}", allow.id),
            }
        } else {
            ItemDecision {
                item: item.label(),
                allowed: false,
                rule: None,
                reason: "no policy allows this".to_string(),
            }
        };
        outcomes.push(outcome);
    }
    let allowed = outcomes.iter().all(|o| o.allowed);
    let decisive = if allowed {
        outcomes.first()
    } else {
        outcomes.iter().find(|o| !o.allowed)
    };
    let rule = decisive.and_then(|o| o.rule.clone());
    let mut reasons: Vec<String> = Vec::new();
    for o in &outcomes {
        if o.allowed == allowed && !reasons.contains(&o.reason) {
            reasons.push(if o.item.is_empty() {
                o.reason.clone()
            } else {
                format!("{}: {}", o.item, o.reason)
            });
        }
    }
    Decision {
        allowed,
        rule,
        reasons,
        items: if outcomes.len() > 1 || !outcomes.iter().all(|o| o.item.is_empty()) {
            outcomes
        } else {
            Vec::new()
        },
    }
}

/// One row of an explanation: rule id, its effect, the item judged, and whether it matched
/// (or the first condition that failed).
pub type RuleOutcome = (Arc<str>, &'static str, String, Result<(), &'static str>);

/// For `policy explain`: every rule of the route, whether it matched each item, and if not,
/// the first condition that failed.
pub fn explain(
    policy: &CompiledPolicy,
    caller: Option<SubjectRef<'_>>,
    req: &PolicyRequest,
) -> Vec<RuleOutcome> {
    let Some(rules) = policy.routes.get(&req.route) else {
        return Vec::new();
    };
    let f = facts(policy, rules, caller, req);
    let items = items(rules, req);
    let mut out = Vec::new();
    for rule in &rules.rules {
        for item in &items {
            let result = check(rule, &f, item);
            let effect = if rule.effect == Effect::Allow {
                "allow"
            } else {
                "deny"
            };
            out.push((rule.id.clone(), effect, item.label(), result));
        }
    }
    out
}

/// The caller's roles by name (for explanations).
pub fn caller_roles(policy: &CompiledPolicy, caller: SubjectRef<'_>) -> Vec<String> {
    role_names(policy, &roles_of(policy, caller))
}
