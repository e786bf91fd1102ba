//! `gatehouse policy test`: the cases in `policies/tests/*.yaml`, each a caller, a request and
//! the decision expected, run against the policy with the same classification the gateway
//! uses.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{CompiledPolicy, Diagnostic, PolicyRequest, RouteInfo, Subject, SubjectRef, evaluate};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// `None`: an unauthenticated caller.
    #[serde(default)]
    pub caller: Option<Subject>,
    pub request: CaseRequest,
    pub expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    pub route: String,
    #[serde(default = "get")]
    pub method: String,
    /// Path with an optional `?query` (the query classifies git requests).
    pub path: String,
    /// Ref updates of a push: `"update refs/heads/main"`, `"create refs/tags/v1"`, `"delete ..."`.
    #[serde(default)]
    pub ref_updates: Vec<String>,
    /// `service.name`s of an OTLP export.
    #[serde(default)]
    pub services: Vec<String>,
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub effect: String,
    /// The deciding rule (omit for "denied because nothing allows it").
    #[serde(default)]
    pub rule: Option<String>,
}

/// One case's outcome.
#[derive(Debug)]
pub struct Outcome {
    pub file: PathBuf,
    /// Where the case starts in its file (0 if unknown).
    pub line: usize,
    pub name: String,
    pub passed: bool,
    pub expected: String,
    pub got: String,
}

/// Parses a ref update written `"<kind> <ref>"`.
pub fn parse_ref_update(text: &str) -> Result<super::RefChange, String> {
    let (kind, name) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| format!("{text:?}: expected \"update|create|delete refs/...\""))?;
    let kind = match kind {
        "update" => super::UpdateKind::Update,
        "create" => super::UpdateKind::Create,
        "delete" => super::UpdateKind::Delete,
        other => return Err(format!("{other:?} is not create, update or delete")),
    };
    Ok(super::RefChange {
        name: name.trim().to_string(),
        kind,
        old: String::new(),
        new: String::new(),
    })
}

/// Builds the policy's view of a described request, classified like the gateway does.
pub fn request_of(routes: &[RouteInfo], r: &CaseRequest) -> Result<PolicyRequest, String> {
    let route = routes
        .iter()
        .find(|x| x.name == r.route)
        .ok_or_else(|| format!("route {:?} is not configured", r.route))?;
    let (path, query) = match r.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (r.path.as_str(), None),
    };
    let refs = r
        .ref_updates
        .iter()
        .map(|u| parse_ref_update(u))
        .collect::<Result<Vec<_>, _>>()?;
    let method = r.method.to_ascii_uppercase();
    Ok(crate::classify::policy_request(
        route.kind,
        &route.name,
        &method,
        path,
        query,
        refs,
        r.services.clone(),
    ))
}

/// Runs every case file in `dir/tests/`.
pub fn run(
    policy: &CompiledPolicy,
    routes: &[RouteInfo],
    dir: &Path,
) -> Result<Vec<Outcome>, Vec<Diagnostic>> {
    let tests = dir.join("tests");
    let files = match super::policy_files(&tests) {
        Ok(f) => f,
        Err(e) => {
            return Err(vec![Diagnostic {
                file: tests,
                line: 0,
                column: 0,
                key: String::new(),
                message: e.to_string(),
            }]);
        }
    };
    let mut outcomes = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Diagnostic {
                    file: file.clone(),
                    line: 0,
                    column: 0,
                    key: String::new(),
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        let cases: CaseFile = match serde_yaml_ng::from_str(&text) {
            Ok(c) => c,
            Err(e) => {
                problems.push(super::yaml_diagnostic(&file, &e));
                continue;
            }
        };
        let positions = super::positions::Positions::of(&text);
        for (n, case) in cases.cases.into_iter().enumerate() {
            let line = positions.find(&format!("cases[{n}]")).map_or(0, |p| p.0);
            let request = match request_of(routes, &case.request) {
                Ok(r) => r,
                Err(message) => {
                    let (line, column) = positions
                        .find(&format!("cases[{n}].request"))
                        .unwrap_or((0, 0));
                    problems.push(Diagnostic {
                        file: file.clone(),
                        line,
                        column,
                        key: format!("cases[{n}] ({}).request", case.name),
                        message,
                    });
                    continue;
                }
            };
            let decision = evaluate(policy, case.caller.as_ref().map(SubjectRef::from), &request);
            let got_rule = decision.rule.as_deref().unwrap_or("-");
            let want_effect = case.expect.effect.to_ascii_lowercase();
            let want_rule = case.expect.rule.as_deref().unwrap_or("-");
            let passed = decision.effect() == want_effect && got_rule == want_rule;
            outcomes.push(Outcome {
                file: file.clone(),
                line,
                name: case.name,
                passed,
                expected: format!("{want_effect} by {want_rule}"),
                got: format!("{} by {got_rule}", decision.effect()),
            });
        }
    }
    if problems.is_empty() {
        Ok(outcomes)
    } else {
        Err(problems)
    }
}

/// The readable table `policy test` prints.
pub fn table(outcomes: &[Outcome]) -> String {
    let width = outcomes
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(4)
        .min(70);
    let mut out = String::new();
    for o in outcomes {
        let mark = if o.passed { "PASS" } else { "FAIL" };
        let name: String = o.name.chars().take(70).collect();
        if o.passed {
            out.push_str(&format!("{mark}  {name:<width$}  {}\n", o.got));
        } else {
            out.push_str(&format!(
                "{mark}  {name:<width$}  expected {}, got {}\n",
                o.expected, o.got
            ));
        }
    }
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    if failed > 0 {
        // Each failure by file, line and case name, so it can be found and fixed.
        out.push_str("\nfailed:\n");
        for o in outcomes.iter().filter(|o| !o.passed) {
            out.push_str(&format!(
                "  {}:{}: {}: expected {}, got {}\n",
                o.file.display(),
                o.line,
                o.name,
                o.expected,
                o.got
            ));
        }
    }
    out.push_str(&format!(
        "\n{} cases, {} passed, {failed} failed\n",
        outcomes.len(),
        outcomes.len() - failed
    ));
    out
}
