//! `gatehouse policy diff OLD NEW --audit DIR`: what a policy change would change, measured on
//! the requests the gateway really saw.
//!
//! Every policy decision in the audit log (a `request` record whose decision names the policy
//! version) is rebuilt into the caller and the classified request it was, and evaluated under
//! both policies. Decisions that differ are grouped (same route, caller, action, repository,
//! old and new outcome) and counted, with the first request of each group as an example. The
//! replay also checks itself: records whose recorded decision differs from OLD's are counted,
//! which says whether OLD really is the policy that was in force.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::Path;

use super::{
    CompiledPolicy, GogsAction, PolicyRequest, RefChange, Resource, Signal, Subject, SubjectRef,
    UpdateKind, evaluate,
};
use crate::audit::Record;

/// A decision as the diff reports it: `allow` / `deny`, and the deciding rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Verdict {
    pub effect: &'static str,
    pub rule: Option<String>,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.rule {
            Some(r) => write!(f, "{} ({r})", self.effect),
            None => write!(f, "{} (nothing allows it)", self.effect),
        }
    }
}

/// Requests that change the same way.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangeKey {
    pub route: String,
    pub caller: String,
    pub action: String,
    pub old: Verdict,
    pub new: Verdict,
}

#[derive(Debug, Clone)]
pub struct Change {
    pub count: u64,
    /// Time and request id of the first request that changes this way.
    pub first_time: String,
    pub first_request: String,
}

#[derive(Debug, Default)]
pub struct DiffReport {
    pub records_read: u64,
    /// Policy decisions replayed.
    pub replayed: u64,
    /// Replayed decisions whose recorded outcome differs from OLD's.
    pub unlike_old: u64,
    pub changes: BTreeMap<ChangeKey, Change>,
}

impl DiffReport {
    pub fn changed(&self) -> u64 {
        self.changes.values().map(|c| c.count).sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (k, c) in &self.changes {
            let _ = writeln!(
                out,
                "{:>6} x  route {}  caller {}  {}\n          {} -> {}   (first: {} request {})",
                c.count, k.route, k.caller, k.action, k.old, k.new, c.first_time, c.first_request
            );
        }
        let allow_to_deny: u64 = self
            .changes
            .iter()
            .filter(|(k, _)| k.old.effect == "allow" && k.new.effect == "deny")
            .map(|(_, c)| c.count)
            .sum();
        let deny_to_allow: u64 = self
            .changes
            .iter()
            .filter(|(k, _)| k.old.effect == "deny" && k.new.effect == "allow")
            .map(|(_, c)| c.count)
            .sum();
        let _ = writeln!(
            out,
            "{} records read, {} policy decisions replayed: {} would change ({} allow -> deny, {} deny -> allow, {} decided by another rule)",
            self.records_read,
            self.replayed,
            self.changed(),
            allow_to_deny,
            deny_to_allow,
            self.changed() - allow_to_deny - deny_to_allow
        );
        if self.unlike_old > 0 {
            let _ = writeln!(
                out,
                "note: {} recorded decision(s) differ from what OLD decides: OLD is not (exactly) the policy that was in force for them",
                self.unlike_old
            );
        }
        out
    }
}

/// The caller and request a record describes, when it is a policy decision.
pub fn replayable(r: &Record) -> Option<(Option<Subject>, PolicyRequest)> {
    if r.kind != "request" {
        return None;
    }
    let decision = r.decision.as_ref()?;
    decision.policy.as_ref()?;
    let route = r.route.clone()?;
    let subject = r.identity.as_ref().map(|i| Subject {
        sub: i.subject.clone(),
        groups: i.groups.clone(),
        client_id: i.client_id.clone(),
        email: i.email.clone(),
        email_verified: i.email_verified,
    });
    let action = r.action.as_ref();
    let kind = action.and_then(|a| a.kind.as_deref());
    let repo = action.and_then(|a| a.repository.clone());
    let refs = || -> Vec<RefChange> {
        action
            .map(|a| {
                a.refs
                    .iter()
                    .map(|x| RefChange {
                        name: x.name.clone(),
                        kind: match x.kind.as_str() {
                            "create" => UpdateKind::Create,
                            "delete" => UpdateKind::Delete,
                            _ => UpdateKind::Update,
                        },
                        old: x.old.clone(),
                        new: x.new.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let services = || action.map(|a| a.services.clone()).unwrap_or_default();
    let gogs = |action: GogsAction, refs: Vec<RefChange>| Resource::Gogs {
        action,
        repo: repo.clone(),
        refs,
    };
    let resource = match kind {
        None => Resource::None,
        Some("web") => gogs(GogsAction::Web, Vec::new()),
        Some("api") => gogs(GogsAction::Api, Vec::new()),
        Some("git_fetch") => gogs(GogsAction::GitFetch, Vec::new()),
        Some("git_push") => gogs(GogsAction::GitPush, refs()),
        Some("otlp_traces") => Resource::Otlp {
            signal: Signal::Traces,
            services: services(),
        },
        Some("otlp_metrics") => Resource::Otlp {
            signal: Signal::Metrics,
            services: services(),
        },
        Some("otlp_logs") => Resource::Otlp {
            signal: Signal::Logs,
            services: services(),
        },
        Some(_) => return None,
    };
    Some((
        subject,
        PolicyRequest {
            route,
            method: r.method.clone()?,
            path: r.path.clone()?,
            resource,
        },
    ))
}

fn verdict(d: &super::Decision) -> Verdict {
    Verdict {
        effect: d.effect(),
        rule: d.rule.as_deref().map(str::to_string),
    }
}

fn describe_caller(s: Option<&Subject>, r: &Record) -> String {
    match (s, r.identity.as_ref()) {
        (Some(s), Some(i)) => {
            let name = i
                .username
                .clone()
                .or_else(|| i.client_id.clone().map(|c| format!("client {c}")))
                .unwrap_or_else(|| s.sub.clone());
            if s.groups.is_empty() {
                name
            } else {
                format!("{name} [{}]", s.groups.join(","))
            }
        }
        _ => "(unauthenticated)".to_string(),
    }
}

fn describe_action(req: &PolicyRequest) -> String {
    match &req.resource {
        Resource::Gogs { action, repo, refs } => {
            let a = match action {
                GogsAction::Web => "web",
                GogsAction::Api => "api",
                GogsAction::GitFetch => "git fetch",
                GogsAction::GitPush => "git push",
            };
            let mut s = format!("{a} {}", repo.as_deref().unwrap_or(&req.path));
            if !refs.is_empty() {
                let names: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
                let _ = write!(s, " {}", names.join(","));
            }
            s
        }
        Resource::Otlp { signal, services } => {
            format!("otlp {signal:?} [{}]", services.join(",")).to_lowercase()
        }
        Resource::None => format!("{} {}", req.method, req.path),
    }
}

/// Replays every policy decision of the records against `old` and `new`.
pub fn replay(
    old: &CompiledPolicy,
    new: &CompiledPolicy,
    records: impl Iterator<Item = Record>,
) -> DiffReport {
    let mut report = DiffReport::default();
    for r in records {
        report.records_read += 1;
        let Some((subject, request)) = replayable(&r) else {
            continue;
        };
        report.replayed += 1;
        let caller = subject.as_ref().map(SubjectRef::from);
        let before = verdict(&evaluate(old, caller, &request));
        let after = verdict(&evaluate(new, caller, &request));
        if r.decision
            .as_ref()
            .is_some_and(|d| d.effect != before.effect || d.rule != before.rule)
        {
            report.unlike_old += 1;
        }
        if before == after {
            continue;
        }
        let key = ChangeKey {
            route: request.route.clone(),
            caller: describe_caller(subject.as_ref(), &r),
            action: describe_action(&request),
            old: before,
            new: after,
        };
        report
            .changes
            .entry(key)
            .and_modify(|c| c.count += 1)
            .or_insert_with(|| Change {
                count: 1,
                first_time: r.time.clone(),
                first_request: r.request_id.clone().unwrap_or_default(),
            });
    }
    report
}

/// Every record in the audit directories, file by file in name (time) order. Lines that are
/// not records (a torn last write) are skipped: `audit verify` is where integrity is checked.
pub fn read_records(dirs: &[std::path::PathBuf]) -> std::io::Result<impl Iterator<Item = Record>> {
    let mut files = Vec::new();
    for d in dirs {
        files.extend(crate::audit::files::log_files(d, None)?);
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files.into_iter().flat_map(|f| lines_of(&f)))
}

fn lines_of(path: &Path) -> impl Iterator<Item = Record> + use<> {
    let reader = std::fs::File::open(path)
        .ok()
        .map(|f| std::io::BufReader::with_capacity(1 << 20, f));
    reader
        .into_iter()
        .flat_map(|r| r.split(b'\n'))
        .filter_map(|line| line.ok().and_then(|l| serde_json::from_slice(&l).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, AuditDecision, AuditIdentity, AuditRef};
    use crate::config::RouteKind;
    use crate::policy::{RouteInfo, compile, parse_file};

    fn policy(text: &str) -> CompiledPolicy {
        let loaded = parse_file(Path::new("p.yaml"), text).unwrap();
        let routes = [RouteInfo {
            name: "gogs".into(),
            kind: RouteKind::Gogs,
        }];
        compile::compile(&[loaded], &routes).unwrap()
    }

    fn push(user: &str, groups: &[&str], refname: &str, effect: &str, rule: &str) -> Record {
        Record {
            kind: "request".into(),
            time: "2026-11-26T10:00:00.000000Z".into(),
            request_id: Some(format!("req-{user}-{refname}")),
            route: Some("gogs".into()),
            method: Some("POST".into()),
            path: Some("/platform/app.git/git-receive-pack".into()),
            identity: Some(AuditIdentity {
                subject: user.into(),
                username: Some(user.into()),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                method: "bearer".into(),
                ..Default::default()
            }),
            action: Some(Action {
                kind: Some("git_push".into()),
                repository: Some("platform/app".into()),
                refs: vec![AuditRef {
                    name: refname.into(),
                    kind: "update".into(),
                    old: "a".repeat(40),
                    new: "b".repeat(40),
                }],
                services: Vec::new(),
            }),
            decision: Some(AuditDecision {
                effect: effect.into(),
                rule: Some(rule.into()),
                reasons: Vec::new(),
                policy: Some("0123456789abcdef".into()),
            }),
            ..Default::default()
        }
    }

    const OLD: &str = "roles:\n  dev: { groups: [engineering] }\nrules:\n  - id: write\n    route: gogs\n    roles: [dev]\n    git: { actions: [push] }\n";

    #[test]
    fn a_new_deny_rule_shows_exactly_the_pushes_it_would_refuse() {
        let new = format!(
            "{OLD}  - id: protect-main\n    route: gogs\n    effect: deny\n    roles: [\"*\"]\n    git: {{ actions: [push], refs: [refs/heads/main] }}\n"
        );
        let records = vec![
            push(
                "alice",
                &["engineering"],
                "refs/heads/main",
                "allow",
                "write",
            ),
            push(
                "alice",
                &["engineering"],
                "refs/heads/main",
                "allow",
                "write",
            ),
            push(
                "alice",
                &["engineering"],
                "refs/heads/feature",
                "allow",
                "write",
            ),
            // Not a policy decision (no policy version): ignored.
            Record {
                decision: Some(AuditDecision {
                    effect: "deny".into(),
                    policy: None,
                    ..Default::default()
                }),
                ..push("bob", &[], "refs/heads/main", "deny", "x")
            },
        ];
        let report = replay(&policy(OLD), &policy(&new), records.into_iter());
        assert_eq!(report.records_read, 4);
        assert_eq!(report.replayed, 3);
        assert_eq!(report.unlike_old, 0);
        assert_eq!(report.changed(), 2);
        let (key, change) = report.changes.iter().next().unwrap();
        assert_eq!(key.caller, "alice [engineering]");
        assert_eq!(key.action, "git push platform/app refs/heads/main");
        assert_eq!(key.old.to_string(), "allow (write)");
        assert_eq!(key.new.to_string(), "deny (protect-main)");
        assert_eq!(change.count, 2);
        let text = report.render();
        assert!(
            text.contains("2 would change (2 allow -> deny, 0 deny -> allow"),
            "{text}"
        );
    }

    #[test]
    fn records_unlike_the_old_policy_are_counted() {
        let records = vec![push(
            "alice",
            &["engineering"],
            "refs/heads/main",
            "deny",
            "other",
        )];
        let report = replay(&policy(OLD), &policy(OLD), records.into_iter());
        assert_eq!(report.unlike_old, 1);
        assert_eq!(report.changed(), 0);
        assert!(report.render().contains("OLD is not (exactly) the policy"));
    }
}
