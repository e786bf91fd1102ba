//! `gatehouse policy explain`: how a request is classified, how every rule of its route
//! fared, and the decision, in words a policy author can act on.

use std::fmt::Write;

use super::evaluate::{caller_roles, evaluate, explain};
use super::{CompiledPolicy, PolicyRequest, Resource, Subject, SubjectRef};

fn describe(req: &PolicyRequest) -> String {
    match &req.resource {
        Resource::None => "a plain request".to_string(),
        Resource::Gogs { action, repo, refs } => {
            let what = match action {
                super::GogsAction::Web => "Gogs web page",
                super::GogsAction::Api => "Gogs API call",
                super::GogsAction::GitFetch => "git fetch",
                super::GogsAction::GitPush => "git push",
            };
            let mut s = format!("{what} of {}", repo.as_deref().unwrap_or("(no repository)"));
            if !refs.is_empty() {
                let list: Vec<String> = refs
                    .iter()
                    .map(|r| format!("{:?} {}", r.kind, r.name).to_lowercase())
                    .collect();
                s.push_str(&format!("; ref updates: {}", list.join(", ")));
            }
            s
        }
        Resource::Otlp { signal, services } => format!(
            "OTLP {signal:?} export for services [{}]",
            services.join(", ")
        )
        .to_lowercase(),
    }
}

pub fn render(policy: &CompiledPolicy, caller: Option<&Subject>, req: &PolicyRequest) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "request:    {} {} on route {}",
        req.method, req.path, req.route
    );
    let _ = writeln!(out, "classified: {}", describe(req));
    match caller {
        Some(c) => {
            let roles = caller_roles(policy, SubjectRef::from(c));
            let _ = writeln!(
                out,
                "caller:     sub {}, groups [{}] -> roles [{}]",
                c.sub,
                c.groups.join(", "),
                roles.join(", ")
            );
        }
        None => {
            let _ = writeln!(out, "caller:     unauthenticated");
        }
    }
    let rows = explain(policy, caller.map(SubjectRef::from), req);
    if rows.is_empty() {
        let _ = writeln!(out, "rules:      none for route {}", req.route);
    } else {
        let id_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(4);
        let item_width = rows.iter().map(|r| r.2.len()).max().unwrap_or(1).max(1);
        let _ = writeln!(out, "rules:");
        for (id, effect, item, result) in &rows {
            let item = if item.is_empty() { "-" } else { item.as_str() };
            let verdict = match result {
                Ok(()) => "MATCH".to_string(),
                Err(why) => format!("no: {why}"),
            };
            let _ = writeln!(
                out,
                "  {id:<id_width$}  {effect:<5}  {item:<item_width$}  {verdict}"
            );
        }
    }
    let d = evaluate(policy, caller.map(SubjectRef::from), req);
    let _ = writeln!(
        out,
        "decision:   {} by {} ({})",
        d.effect().to_uppercase(),
        d.rule.as_deref().unwrap_or("default deny"),
        d.reasons.join("; ")
    );
    out
}
