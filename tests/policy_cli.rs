//! The policy tools as their users run them: the real `gatehouse` binary on the shipped
//! `policies/` and `gatehouse.example.toml`. `policy test` passes every shipped case and names
//! a failing one by file and case; `policy explain` shows the deciding rule, the rules that
//! nearly matched and why they did not.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

struct Run {
    ok: bool,
    code: Option<i32>,
    out: String,
    err: String,
}

fn gatehouse(args: &[&str]) -> Run {
    let output = Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("GATEHOUSE_CONFIG")
        .output()
        .expect("run gatehouse");
    Run {
        ok: output.status.success(),
        code: output.status.code(),
        out: String::from_utf8_lossy(&output.stdout).into_owned(),
        err: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The line of `text` that starts (after indentation) with `prefix`.
fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
}

/// The words of the explain row for rule `id`.
fn rule_row<'a>(text: &'a str, id: &str) -> Vec<&'a str> {
    let row = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no row for rule {id} in:\n{text}"));
    row.split_whitespace().collect()
}

/// Copies `from` (the policy files and `tests/`) into `to`.
fn copy_policies(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("tests")).unwrap();
    for sub in ["", "tests"] {
        for entry in std::fs::read_dir(from.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, to.join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
}

/// How many cases the shipped test files hold.
fn shipped_cases() -> usize {
    let cases = std::fs::read_dir(repo("policies/tests"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .map(|text| {
            text.lines()
                .filter(|l| l.trim_start().starts_with("- name:"))
                .count()
        })
        .sum();
    assert!(cases >= 20, "the shipped cases went missing ({cases})");
    cases
}

#[test]
fn policy_test_passes_every_shipped_case() {
    let cases = shipped_cases();

    let r = gatehouse(&[
        "policy",
        "test",
        "policies",
        "--config",
        "gatehouse.example.toml",
    ]);
    assert!(r.ok, "policy test failed:\n{}\n{}", r.out, r.err);
    assert_eq!(
        line(&r.out, &format!("{cases} cases")),
        format!("{cases} cases, {cases} passed, 0 failed"),
        "{}",
        r.out
    );
    let rows: Vec<&str> = r
        .out
        .lines()
        .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
        .collect();
    assert_eq!(rows.len(), cases, "{}", r.out);
    assert!(rows.iter().all(|l| l.starts_with("PASS ")), "{}", r.out);
    // A row says what the policy decided.
    let row = line(
        &r.out,
        "PASS  a developer cannot push to main of a platform repository",
    );
    assert!(row.ends_with("deny by protect-main"), "{row}");

    // The configuration's policy directory is the default.
    let r = gatehouse(&["policy", "test", "--config", "gatehouse.example.toml"]);
    assert!(r.ok, "{}\n{}", r.out, r.err);
    assert!(
        r.out.contains(&format!("{cases} passed, 0 failed")),
        "{}",
        r.out
    );
}

#[test]
fn policy_test_fails_and_names_the_case_whose_expectation_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    copy_policies(&repo("policies"), &policies);
    let cases = policies.join("tests/gogs.yaml");
    let text = std::fs::read_to_string(&cases).unwrap();
    // Flip one expectation: a developer pushing to main is said to be allowed.
    let case = "  - name: a developer cannot push to main of a platform repository\n";
    let start = text.find(case).expect("the shipped case");
    let expect = "    expect: { effect: deny, rule: protect-main }\n";
    let at = start + text[start..].find(expect).expect("its expectation");
    let flipped = format!(
        "{}    expect: {{ effect: allow, rule: write-code }}\n{}",
        &text[..at],
        &text[at + expect.len()..]
    );
    std::fs::write(&cases, flipped).unwrap();

    let r = gatehouse(&[
        "policy",
        "test",
        policies.to_str().unwrap(),
        "--config",
        "gatehouse.example.toml",
    ]);
    assert!(!r.ok, "a failing case passed:\n{}", r.out);
    assert_eq!(r.code, Some(1), "{}\n{}", r.out, r.err);
    let summary = line(&r.out, "FAIL  a developer cannot push to main");
    assert!(
        summary.ends_with("expected allow by write-code, got deny by protect-main"),
        "{summary}"
    );
    // Named by file, the line the case starts on, and name.
    let case_line = text[..start].lines().count() + 1;
    assert!(
        r.out.contains(&format!(
            "  {}:{case_line}: a developer cannot push to main of a platform repository: expected allow by write-code, got deny by protect-main\n",
            cases.display()
        )),
        "the failure does not name its file and case:\n{}",
        r.out
    );
    let cases = shipped_cases();
    assert_eq!(
        line(&r.out, &format!("{cases} cases")),
        format!("{cases} cases, {} passed, 1 failed", cases - 1),
        "{}",
        r.out
    );
    // Only the flipped case fails.
    assert_eq!(
        r.out.lines().filter(|l| l.starts_with("FAIL")).count(),
        1,
        "{}",
        r.out
    );
}

#[test]
fn policy_explain_shows_the_deny_rule_and_the_rules_that_nearly_matched() {
    let r = gatehouse(&[
        "policy",
        "explain",
        "--config",
        "gatehouse.example.toml",
        "--route",
        "gogs",
        "--sub",
        "alice",
        "--groups",
        "engineering",
        "--method",
        "POST",
        "--path",
        "/platform/app.git/git-receive-pack",
        "--ref-update",
        "refs/heads/main",
    ]);
    assert!(r.ok, "{}\n{}", r.out, r.err);
    assert_eq!(
        line(&r.out, "classified:"),
        "classified: git push of platform/app; ref updates: update refs/heads/main"
    );
    assert!(
        line(&r.out, "caller:").ends_with("-> roles [developer]"),
        "{}",
        r.out
    );
    let decision = line(&r.out, "decision:");
    assert!(
        decision.starts_with("decision:   DENY by protect-main ("),
        "{decision}"
    );
    assert!(
        decision.contains("denied by policy protect-main: only sre may push to main"),
        "{decision}"
    );
    // The deny rule and the allow rule it overrides both match.
    assert_eq!(
        rule_row(&r.out, "protect-main")[1..],
        ["deny", "refs/heads/main", "MATCH"]
    );
    assert_eq!(
        rule_row(&r.out, "write-code")[1..],
        ["allow", "refs/heads/main", "MATCH"]
    );
    // Rules that nearly matched say which condition failed.
    assert_eq!(
        rule_row(&r.out, "no-tag-deletes")[3..],
        ["no:", "ref", "does", "not", "match"]
    );
    assert_eq!(
        rule_row(&r.out, "read-code")[3..],
        ["no:", "request", "kind", "differs"]
    );
    assert_eq!(
        rule_row(&r.out, "api-read-only")[3..],
        ["no:", "caller", "has", "none", "of", "its", "roles"]
    );
}

#[test]
fn policy_explain_shows_the_allowing_rule() {
    let r = gatehouse(&[
        "policy",
        "explain",
        "--config",
        "gatehouse.example.toml",
        "--dir",
        "policies",
        "--route",
        "gogs",
        "--sub",
        "alice",
        "--groups",
        "engineering",
        "--method",
        "POST",
        "--path",
        "/platform/app.git/git-receive-pack",
        "--ref-update",
        "update refs/heads/feature-x",
    ]);
    assert!(r.ok, "{}\n{}", r.out, r.err);
    assert!(
        line(&r.out, "decision:").starts_with("decision:   ALLOW by write-code"),
        "{}",
        r.out
    );
    assert_eq!(
        rule_row(&r.out, "write-code")[1..],
        ["allow", "refs/heads/feature-x", "MATCH"]
    );
    // protect-main looks only at main.
    assert_eq!(
        rule_row(&r.out, "protect-main")[3..],
        ["no:", "ref", "does", "not", "match"]
    );
}

/// A configuration with one public Gogs route and the policy directory `policies`, beside it.
fn check_config(dir: &Path) -> PathBuf {
    let config = dir.join("gatehouse.toml");
    std::fs::write(
        &config,
        "[server]\nplaintext_listen = [\"127.0.0.1:0\"]\n[audit]\ndir = \"audit\"\n\
         [policy]\ndir = \"policies\"\n\
         [[routes]]\nname = \"gogs\"\nkind = \"gogs\"\nhosts = [\"git.example.com\"]\n\
         upstream = \"http://127.0.0.1:3000\"\npublic = true\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    config
}

#[test]
fn check_refuses_a_bad_policy_directory_naming_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = check_config(dir.path());
    let policies = dir.path().join("policies");
    let config_arg = config.to_str().unwrap();

    // A good policy passes, so what follows fails for the policy alone.
    std::fs::write(
        policies.join("a.yaml"),
        "roles:\n  dev: { groups: [engineering] }\nrules:\n  - id: browse\n    route: gogs\n    roles: [dev]\n",
    )
    .unwrap();
    let r = gatehouse(&["check", "--config", config_arg]);
    assert!(r.ok, "{}\n{}", r.out, r.err);

    // Semantic problems, every one at its line and column: a role granted to nobody, an
    // unknown route (the rest of that rule is still checked), an unknown role, a duplicate id.
    let a = policies.join("a.yaml");
    std::fs::write(
        &a,
        "roles:\n  dev: { groups: [engineering] }\n  nobody: {}\nrules:\n  - id: browse\n    route: gitea\n    roles: [dev]\n    paths: [admin]\n  - id: push\n    route: gogs\n    roles: [devs]\n  - id: browse\n    route: gogs\n    roles: [dev]\n",
    )
    .unwrap();
    let r = gatehouse(&["check", "--config", config_arg]);
    assert!(!r.ok, "check accepted a bad policy:\n{}", r.out);
    assert_eq!(r.code, Some(1));
    let a = a.display().to_string();
    let mut got: Vec<&str> = r.err.lines().collect();
    got.sort();
    let mut want = vec![
        format!(
            "{a}:3:3: roles.nobody: grants the role to nobody: list groups, clients, subjects, emails or email_domains"
        ),
        format!(
            "{a}:6:5: rules[0] (browse): route \"gitea\" is not configured (routes: gogs, gatehouse)"
        ),
        format!(
            "{a}:8:13: rules[0] (browse).paths: \"admin\" must start with '/' (paths are matched from the root)"
        ),
        format!(
            "{a}:11:13: rules[1] (push).roles: role \"devs\" is not defined (roles: dev, nobody)"
        ),
        format!("{a}:12:5: rules[2] (browse): rule id \"browse\" is already used at {a}:5"),
    ];
    want.sort();
    assert_eq!(got, want);

    // An unknown field and a YAML syntax error, each at its line and column.
    std::fs::write(
        policies.join("a.yaml"),
        "rules:\n  - id: a\n    route: gogs\n    rolez: [dev]\n",
    )
    .unwrap();
    std::fs::write(
        policies.join("b.yaml"),
        "rules:\n  - id: b\n    route: [gogs\n",
    )
    .unwrap();
    let r = gatehouse(&["check", "--config", config_arg]);
    assert!(!r.ok, "{}", r.out);
    let unknown = line(&r.err, &a);
    assert!(
        unknown.starts_with(&format!(
            "{a}:4:5: rules[0]: unknown field `rolez`, expected one of `id`, "
        )),
        "{unknown}"
    );
    assert!(
        !unknown.contains(" at line "),
        "position said twice: {unknown}"
    );
    let b = policies.join("b.yaml").display().to_string();
    assert_eq!(
        line(&r.err, &b),
        format!("{b}:3:12: rules[0].route: invalid type: sequence, expected a string")
    );

    // A policy directory that is not there.
    std::fs::remove_dir_all(&policies).unwrap();
    let r = gatehouse(&["check", "--config", config_arg]);
    assert!(!r.ok, "{}", r.out);
    assert!(
        r.err
            .contains(&format!("{}: cannot read policies", policies.display())),
        "{}",
        r.err
    );
}
