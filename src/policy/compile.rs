//! Policy files compiled once into the form requests are evaluated against.
//!
//! Roles become bits; each caller fact (group, client, subject, verified email or domain)
//! maps to the role bits it grants, so a caller's roles are a few hash lookups. Every glob of
//! a route, per dimension (path, repository, ref, service), goes into one `GlobSet`, so a
//! request is matched against all patterns in one pass and each rule only tests bits.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::file::{
    EffectDef, GitActionDef, GogsRequestDef, PolicyFile, RoleDef, RuleDef, SignalDef, UpdateDef,
};
use super::positions::Positions;
use super::{Diagnostic, RouteInfo};
use crate::config::RouteKind;

/// At most this many roles (the role set is a fixed-size bitset).
pub const MAX_ROLES: usize = 256;

/// A set of roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles([u64; 4]);

impl Roles {
    pub fn with(mut self, i: usize) -> Self {
        self.0[i / 64] |= 1 << (i % 64);
        self
    }
    pub fn union(&mut self, other: &Roles) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
    }
    pub fn intersects(&self, other: &Roles) -> bool {
        self.0.iter().zip(other.0.iter()).any(|(a, b)| a & b != 0)
    }
    pub fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// A growable bitset over pattern indices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bits(Vec<u64>);

impl Bits {
    pub fn with_capacity(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    pub fn set(&mut self, i: usize) {
        let w = i / 64;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (i % 64);
    }
    pub fn clear(&mut self) {
        self.0.iter_mut().for_each(|w| *w = 0);
    }
    pub fn intersects(&self, other: &Bits) -> bool {
        self.0.iter().zip(other.0.iter()).any(|(a, b)| a & b != 0)
    }
    /// Indices of the set bits.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, word)| {
            (0..64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

/// The patterns of one dimension of one route, matched in a single pass.
#[derive(Debug, Default)]
pub struct PatternSet {
    pub set: GlobSet,
    pub len: usize,
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// Which Gogs requests a rule covers (bit per action).
pub const WEB: u8 = 1;
pub const API: u8 = 2;
pub const FETCH: u8 = 4;
pub const PUSH: u8 = 8;

#[derive(Debug)]
pub struct CompiledRule {
    pub id: Arc<str>,
    pub description: Option<String>,
    pub effect: Effect,
    /// `None`: any authenticated caller (`"*"`).
    pub roles: Option<Roles>,
    pub unless: Roles,
    /// Bit per method in [`METHODS`]; `None`: any.
    pub methods: Option<u16>,
    pub paths: Option<Bits>,
    /// Gogs actions covered; `None`: not constrained.
    pub actions: Option<u8>,
    pub repos: Option<Bits>,
    pub refs: Option<Bits>,
    /// Bit per update kind (create 1, delete 2, update 4).
    pub updates: Option<u8>,
    pub signals: Option<u8>,
    pub services: Option<Bits>,
    pub file: PathBuf,
    pub line: usize,
}

/// All rules of one route, in file order, with their pattern sets.
#[derive(Debug, Default)]
pub struct RouteRules {
    pub rules: Vec<CompiledRule>,
    pub paths: PatternSet,
    pub repos: PatternSet,
    pub refs: PatternSet,
    pub services: PatternSet,
    /// Whether any rule looks at OTLP services (then the request body must be read).
    pub needs_services: bool,
    /// Which rules can possibly match, so evaluation visits a handful instead of all.
    pub index: RuleIndex,
}

/// Candidate rules by their most selective condition: a rule naming repositories can only
/// match when one of them matched; otherwise a rule naming roles only when the caller holds
/// one; the rest are always candidates.
#[derive(Debug, Default)]
pub struct RuleIndex {
    pub always: Vec<u32>,
    /// Repository pattern index to rules.
    pub by_repo: Vec<Vec<u32>>,
    /// Role index to rules.
    pub by_role: Vec<Vec<u32>>,
}

impl RuleIndex {
    fn build(rules: &[CompiledRule], repo_patterns: usize) -> RuleIndex {
        let mut index = RuleIndex {
            always: Vec::new(),
            by_repo: vec![Vec::new(); repo_patterns],
            by_role: vec![Vec::new(); MAX_ROLES],
        };
        for (i, r) in rules.iter().enumerate() {
            let i = i as u32;
            if let Some(repos) = &r.repos {
                for p in repos.ones() {
                    if let Some(list) = index.by_repo.get_mut(p) {
                        list.push(i);
                    }
                }
            } else if let Some(roles) = &r.roles {
                for role in 0..MAX_ROLES {
                    if roles.contains(role) {
                        index.by_role[role].push(i);
                    }
                }
            } else {
                index.always.push(i);
            }
        }
        index.by_role.truncate(
            index
                .by_role
                .iter()
                .rposition(|l| !l.is_empty())
                .map_or(0, |p| p + 1),
        );
        index
    }
}

/// Caller facts to role bits.
#[derive(Debug, Default)]
pub struct RoleIndex {
    pub names: Vec<String>,
    pub by_group: HashMap<String, Roles>,
    pub by_client: HashMap<String, Roles>,
    pub by_subject: HashMap<String, Roles>,
    pub by_email: HashMap<String, Roles>,
    pub by_domain: HashMap<String, Roles>,
}

/// A policy ready to evaluate requests.
#[derive(Debug, Default)]
pub struct CompiledPolicy {
    pub roles: RoleIndex,
    pub routes: HashMap<String, RouteRules>,
    pub files: Vec<PathBuf>,
    pub rule_count: usize,
    /// SHA-256 over the policy files' names and contents: which policy was in force.
    pub digest: String,
    /// The digest's first 16 hex digits, stamped on every policy decision in the audit log.
    pub version: std::sync::Arc<str>,
}

pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "OTHER",
];

pub fn method_bit(method: &str) -> u16 {
    let i = METHODS
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1);
    1 << i
}

/// One parsed file with what is needed to point at its rules.
pub struct Loaded {
    pub path: PathBuf,
    pub file: PolicyFile,
    /// Where each node of the file is.
    pub positions: Positions,
    /// SHA-256 of the file's text.
    pub text_digest: Vec<u8>,
}

struct Builder {
    problems: Vec<Diagnostic>,
}

fn glob(pattern: &str, case_insensitive: bool) -> Result<globset::Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .case_insensitive(case_insensitive)
        .backslash_escape(true)
        .empty_alternates(false)
        .build()
        .map_err(|e| e.kind().to_string())
}

/// Collects the patterns of one dimension of a route and hands out their indices.
#[derive(Default)]
struct PatternCollector {
    index: HashMap<String, usize>,
    order: Vec<String>,
    case_insensitive: bool,
}

impl PatternCollector {
    fn add(&mut self, pattern: &str) -> usize {
        let key = if self.case_insensitive {
            pattern.to_ascii_lowercase()
        } else {
            pattern.to_string()
        };
        if let Some(i) = self.index.get(&key) {
            return *i;
        }
        let i = self.order.len();
        self.index.insert(key.clone(), i);
        self.order.push(key);
        i
    }

    fn finish(self) -> PatternSet {
        let mut b = GlobSetBuilder::new();
        for p in &self.order {
            // Validated when the rule was compiled.
            if let Ok(g) = glob(p, self.case_insensitive) {
                b.add(g);
            }
        }
        PatternSet {
            set: b.build().unwrap_or_else(|_| GlobSet::empty()),
            len: self.order.len(),
            sources: self.order,
        }
    }
}

#[derive(Default)]
struct RouteBuild {
    rules: Vec<CompiledRule>,
    paths: PatternCollector,
    repos: PatternCollector,
    refs: PatternCollector,
    services: PatternCollector,
    needs_services: bool,
}

impl Builder {
    /// A problem at `path` of the file (`rules[2].git.refs[0]`), or at the nearest enclosing
    /// node the file has.
    fn report(&mut self, site: &Site<'_>, path: &str, key: &str, message: impl Into<String>) {
        let (line, column) = site.positions.find(path).unwrap_or((0, 0));
        self.problems.push(Diagnostic {
            file: site.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }
}

/// A file and the positions of its nodes, to point problems at.
struct Site<'a> {
    file: &'a Path,
    positions: &'a Positions,
}

impl<'a> Site<'a> {
    fn of(l: &'a Loaded) -> Site<'a> {
        Site {
            file: &l.path,
            positions: &l.positions,
        }
    }

    /// `file:line` of `path`, for messages that point at another place.
    fn describe(&self, path: &str) -> String {
        match self.positions.find(path) {
            Some((line, _)) => format!("{}:{line}", self.file.display()),
            None => self.file.display().to_string(),
        }
    }
}

/// Compiles parsed files against the configured routes, collecting every problem: unknown
/// roles and routes, duplicate ids and keys, bad globs, and rules that can never match. Each
/// problem names its file, line and column; a rule with one problem is still checked for the
/// others.
pub fn compile(loaded: &[Loaded], routes: &[RouteInfo]) -> Result<CompiledPolicy, Vec<Diagnostic>> {
    let mut b = Builder {
        problems: Vec::new(),
    };

    // Keys written twice in one mapping (YAML keeps the last one silently).
    for l in loaded {
        let site = Site::of(l);
        for (path, (line, column), (first, _)) in &l.positions.duplicates {
            b.problems.push(Diagnostic {
                file: site.file.to_path_buf(),
                line: *line,
                column: *column,
                key: path.clone(),
                message: format!("is written twice; the first is at line {first}"),
            });
        }
    }

    // Roles, across all files.
    let mut role_defs: BTreeMap<String, (RoleDef, &Loaded)> = BTreeMap::new();
    for l in loaded {
        let site = Site::of(l);
        for (name, def) in &l.file.roles {
            let path = format!("roles.{name}");
            if name == "*" || name.trim().is_empty() {
                b.report(&site, &path, &path, "is a reserved role name");
                continue;
            }
            if let Some((_, first)) = role_defs.get(name) {
                let message = format!(
                    "role {name:?} is also defined at {}",
                    Site::of(first).describe(&path)
                );
                b.report(&site, &path, &path, message);
                continue;
            }
            if def.groups.is_empty()
                && def.clients.is_empty()
                && def.subjects.is_empty()
                && def.emails.is_empty()
                && def.email_domains.is_empty()
            {
                b.report(&site, &path, &path, "grants the role to nobody: list groups, clients, subjects, emails or email_domains");
            }
            role_defs.insert(name.clone(), (def.clone(), l));
        }
    }
    if let Some((name, (_, l))) = role_defs.iter().nth(MAX_ROLES) {
        let path = format!("roles.{name}");
        b.report(
            &Site::of(l),
            &path,
            &path,
            format!(
                "{} roles defined; at most {MAX_ROLES} are supported",
                role_defs.len()
            ),
        );
    }
    let mut index = RoleIndex::default();
    let mut role_ids: HashMap<String, usize> = HashMap::new();
    for (i, (name, (def, _))) in role_defs.iter().enumerate().take(MAX_ROLES) {
        role_ids.insert(name.clone(), i);
        index.names.push(name.clone());
        let bit = Roles::default().with(i);
        let add =
            |map: &mut HashMap<String, Roles>, key: String| map.entry(key).or_default().union(&bit);
        for g in &def.groups {
            add(&mut index.by_group, g.clone());
        }
        for c in &def.clients {
            add(&mut index.by_client, c.clone());
        }
        for s in &def.subjects {
            add(&mut index.by_subject, s.clone());
        }
        for e in &def.emails {
            add(&mut index.by_email, e.to_ascii_lowercase());
        }
        for d in &def.email_domains {
            add(
                &mut index.by_domain,
                d.trim_start_matches('@').to_ascii_lowercase(),
            );
        }
    }

    // Rules, per route, in file order.
    let mut builds: HashMap<String, RouteBuild> = HashMap::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut count = 0;
    for l in loaded {
        let site = Site::of(l);
        for (n, rule) in l.file.rules.iter().enumerate() {
            let at = format!("rules[{n}]");
            let key = format!("rules[{n}] ({})", rule.id);
            // A rule with a problem here is still checked for every other problem.
            let mut usable = true;
            if rule.id.trim().is_empty() {
                b.report(
                    &site,
                    &format!("{at}.id"),
                    &format!("{key}.id"),
                    "is empty: every rule needs an id",
                );
                usable = false;
            } else if let Some(first) = ids.get(&rule.id) {
                let message = format!("rule id {:?} is already used at {first}", rule.id);
                b.report(&site, &format!("{at}.id"), &key, message);
                usable = false;
            } else {
                ids.insert(rule.id.clone(), site.describe(&format!("{at}.id")));
            }
            let route = routes.iter().find(|r| r.name == rule.route);
            if route.is_none() {
                let known: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
                b.report(
                    &site,
                    &format!("{at}.route"),
                    &key,
                    format!(
                        "route {:?} is not configured (routes: {})",
                        rule.route,
                        known.join(", ")
                    ),
                );
                usable = false;
            }
            let mut scratch = RouteBuild::default();
            let build = match route {
                Some(_) => builds
                    .entry(rule.route.clone())
                    .or_insert_with(|| RouteBuild {
                        repos: PatternCollector {
                            case_insensitive: true,
                            ..Default::default()
                        },
                        ..Default::default()
                    }),
                None => &mut scratch,
            };
            let target = Target {
                site: &site,
                at: &at,
                key: &key,
            };
            if let Some(c) = compile_rule(&mut b, &target, rule, route, &role_ids, build)
                && usable
            {
                build.rules.push(c);
                count += 1;
            }
        }
    }
    if !b.problems.is_empty() {
        return Err(b.problems);
    }
    let routes = builds
        .into_iter()
        .map(|(name, rb)| {
            (name, {
                let repos = rb.repos.finish();
                RouteRules {
                    index: RuleIndex::build(&rb.rules, repos.len),
                    rules: rb.rules,
                    paths: rb.paths.finish(),
                    repos,
                    refs: rb.refs.finish(),
                    services: rb.services.finish(),
                    needs_services: rb.needs_services,
                }
            })
        })
        .collect();
    Ok(CompiledPolicy {
        roles: index,
        routes,
        files: loaded.iter().map(|l| l.path.clone()).collect(),
        rule_count: count,
        digest: String::new(),
        version: std::sync::Arc::from(""),
    })
}

/// The rule being compiled: its file, its path in the file (`rules[3]`) and the key problems
/// are reported under (`rules[3] (protect-main)`).
struct Target<'a> {
    site: &'a Site<'a>,
    at: &'a str,
    key: &'a str,
}

impl Target<'_> {
    /// Reports a problem with `field` (`roles`, `git.refs`), pointing at `item` of it when
    /// given (`git.refs[1]`).
    fn report(
        &self,
        b: &mut Builder,
        field: &str,
        item: Option<usize>,
        message: impl Into<String>,
    ) {
        let key = if field.is_empty() {
            self.key.to_string()
        } else {
            format!("{}.{field}", self.key)
        };
        let mut path = if field.is_empty() {
            self.at.to_string()
        } else {
            format!("{}.{field}", self.at)
        };
        if let Some(i) = item {
            path.push_str(&format!("[{i}]"));
        }
        b.report(self.site, &path, &key, message);
    }
}

/// Checks one rule, reporting every problem; `route` `None` (not configured) skips only the
/// checks that depend on the route's kind. `None` if anything was reported.
fn compile_rule(
    b: &mut Builder,
    t: &Target<'_>,
    rule: &RuleDef,
    route: Option<&RouteInfo>,
    role_ids: &HashMap<String, usize>,
    build: &mut RouteBuild,
) -> Option<CompiledRule> {
    let before = b.problems.len();
    let effect = match rule.effect.unwrap_or(EffectDef::Allow) {
        EffectDef::Allow => Effect::Allow,
        EffectDef::Deny => Effect::Deny,
    };
    let resolve = |names: &[String], what: &str, b: &mut Builder| -> (Roles, bool) {
        let mut roles = Roles::default();
        let mut any = false;
        for (i, name) in names.iter().enumerate() {
            if name == "*" {
                any = true;
            } else if let Some(id) = role_ids.get(name) {
                roles = roles.with(*id);
            } else {
                let mut known: Vec<&String> = role_ids.keys().collect();
                known.sort();
                let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
                t.report(
                    b,
                    what,
                    Some(i),
                    format!("role {name:?} is not defined (roles: {})", known.join(", ")),
                );
            }
        }
        (roles, any)
    };
    let roles = match &rule.roles {
        None if effect == Effect::Allow => {
            t.report(
                b,
                "",
                None,
                "an allow rule must name its roles (add roles: [\"*\"] for any authenticated caller)",
            );
            None
        }
        None => None,
        Some(list) if list.is_empty() => {
            t.report(b, "roles", None, "is empty, so the rule can never match");
            None
        }
        Some(list) => {
            let (r, any) = resolve(list, "roles", b);
            if any { None } else { Some(r) }
        }
    };
    let (unless, unless_any) = resolve(&rule.unless, "unless", b);
    if unless_any {
        let star = rule.unless.iter().position(|n| n == "*");
        t.report(
            b,
            "unless",
            star,
            "\"*\" here would exempt every caller, so the rule could never match",
        );
    }
    if let Some(r) = &roles {
        // Every role the rule applies to is exempted: it can never match.
        let mut covered = *r;
        covered
            .0
            .iter_mut()
            .zip(unless.0.iter())
            .for_each(|(a, u)| *a &= !u);
        if covered.is_empty() && !r.is_empty() {
            t.report(
                b,
                "unless",
                None,
                "exempts every role the rule applies to, so the rule can never match",
            );
        }
    }

    let methods = rule.methods.as_ref().map(|list| {
        if list.is_empty() {
            t.report(b, "methods", None, "is empty, so the rule can never match");
        }
        list.iter().enumerate().fold(0u16, |acc, (i, m)| {
            let upper = m.to_ascii_uppercase();
            if !METHODS[..METHODS.len() - 1].contains(&upper.as_str()) {
                t.report(b, "methods", Some(i), format!("{m:?} is not a method the gateway passes (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, PROPFIND)"));
            }
            acc | method_bit(&upper)
        })
    });

    let patterns = |list: &[String],
                    what: &str,
                    collector: &mut PatternCollector,
                    ci: bool,
                    b: &mut Builder|
     -> Bits {
        let mut bits = Bits::default();
        if list.is_empty() {
            t.report(b, what, None, "is empty, so the rule can never match");
        }
        for (i, p) in list.iter().enumerate() {
            match glob(p, ci) {
                Ok(_) => bits.set(collector.add(p)),
                Err(e) => t.report(b, what, Some(i), format!("{p:?} is not a valid glob: {e}")),
            }
        }
        bits
    };
    let paths = rule.paths.as_ref().map(|list| {
        for (i, p) in list.iter().enumerate() {
            if !p.starts_with('/') && !p.starts_with('*') {
                t.report(
                    b,
                    "paths",
                    Some(i),
                    format!("{p:?} must start with '/' (paths are matched from the root)"),
                );
            }
        }
        patterns(list, "paths", &mut build.paths, false, b)
    });

    let mut actions: Option<u8> = None;
    let mut repos: Option<Bits> = None;
    let mut refs: Option<Bits> = None;
    let mut updates: Option<u8> = None;
    let mut signals: Option<u8> = None;
    let mut services: Option<Bits> = None;
    // The kind checks need a configured route; an unknown one was reported already.
    let not = |k: RouteKind| route.filter(|r| r.kind != k);
    if let Some(g) = &rule.gogs {
        if let Some(route) = not(RouteKind::Gogs) {
            t.report(
                b,
                "gogs",
                None,
                format!(
                    "route {:?} is of kind {}, so a gogs condition can never match",
                    route.name,
                    route.kind.as_str()
                ),
            );
        }
        if let Some(list) = &g.requests {
            actions = Some(list.iter().fold(0, |acc, r| {
                acc | match r {
                    GogsRequestDef::Web => WEB,
                    GogsRequestDef::Api => API,
                    GogsRequestDef::Git => FETCH | PUSH,
                }
            }));
        }
        if let Some(list) = &g.repos {
            repos = Some(patterns(list, "gogs.repos", &mut build.repos, true, b));
        }
    }
    if let Some(g) = &rule.git {
        if let Some(route) = not(RouteKind::Gogs) {
            t.report(
                b,
                "git",
                None,
                format!(
                    "route {:?} is of kind {}, so a git condition can never match",
                    route.name,
                    route.kind.as_str()
                ),
            );
        }
        if rule.gogs.is_some() {
            t.report(
                b,
                "git",
                None,
                "use either gogs or git in one rule, not both",
            );
        }
        let git_actions = g.actions.as_ref().map_or(FETCH | PUSH, |list| {
            list.iter().fold(0, |acc, a| {
                acc | if *a == GitActionDef::Fetch {
                    FETCH
                } else {
                    PUSH
                }
            })
        });
        actions = Some(git_actions);
        if let Some(list) = &g.repos {
            repos = Some(patterns(list, "git.repos", &mut build.repos, true, b));
        }
        if g.refs.is_some() || g.updates.is_some() {
            if git_actions & PUSH == 0 {
                let field = if g.refs.is_some() {
                    "git.refs"
                } else {
                    "git.updates"
                };
                t.report(
                    b,
                    field,
                    None,
                    "refs and updates only apply to pushes, and this rule covers fetch only",
                );
            }
            if let Some(list) = &g.refs {
                for (i, r) in list.iter().enumerate() {
                    if !r.starts_with("refs/") && !r.starts_with('*') {
                        t.report(
                            b,
                            "git.refs",
                            Some(i),
                            format!(
                                "{r:?} must be a full ref name (refs/heads/..., refs/tags/...)"
                            ),
                        );
                    }
                }
                refs = Some(patterns(list, "git.refs", &mut build.refs, false, b));
            }
            updates = g.updates.as_ref().map(|list| {
                list.iter().fold(0, |acc, u| {
                    acc | match u {
                        UpdateDef::Create => 1,
                        UpdateDef::Delete => 2,
                        UpdateDef::Update => 4,
                    }
                })
            });
        }
    }
    if let Some(o) = &rule.otlp {
        if let Some(route) = not(RouteKind::Otlp) {
            t.report(
                b,
                "otlp",
                None,
                format!(
                    "route {:?} is of kind {}, so an otlp condition can never match",
                    route.name,
                    route.kind.as_str()
                ),
            );
        }
        signals = o.signals.as_ref().map(|list| {
            list.iter().fold(0, |acc, s| {
                acc | match s {
                    SignalDef::Traces => 1,
                    SignalDef::Metrics => 2,
                    SignalDef::Logs => 4,
                }
            })
        });
        if let Some(list) = &o.services {
            services = Some(patterns(
                list,
                "otlp.services",
                &mut build.services,
                false,
                b,
            ));
            build.needs_services = true;
        }
    }
    if let (Some(m), Some(a)) = (methods, actions) {
        // git pushes and fetches use GET and POST; a rule on pushes limited to other methods
        // cannot match.
        let git_methods = method_bit("GET") | method_bit("POST");
        if a & (FETCH | PUSH) == a && m & git_methods == 0 {
            t.report(
                b,
                "methods",
                None,
                "git requests are GET or POST, so this rule can never match",
            );
        }
    }
    if b.problems.len() > before {
        return None;
    }
    Some(CompiledRule {
        id: Arc::from(rule.id.as_str()),
        description: rule.description.clone(),
        effect,
        roles,
        unless,
        methods,
        paths,
        actions,
        repos,
        refs,
        updates,
        signals,
        services,
        file: t.site.file.to_path_buf(),
        line: t.site.positions.find(t.at).map_or(0, |(line, _)| line),
    })
}

/// Routes a policy can refer to.
pub fn known_routes(config: &crate::config::Config) -> Vec<RouteInfo> {
    config
        .routes
        .iter()
        .map(|r| RouteInfo {
            name: r.name.clone(),
            kind: r.kind,
        })
        .chain(std::iter::once(RouteInfo {
            name: super::GATEWAY_ROUTE.to_string(),
            kind: crate::config::RouteKind::Plain,
        }))
        .collect()
}
