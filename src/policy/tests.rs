//! Table-driven tests of compilation and evaluation.

use std::path::Path;

use super::*;

fn routes() -> Vec<RouteInfo> {
    vec![
        RouteInfo {
            name: "gogs".into(),
            kind: RouteKind::Gogs,
        },
        RouteInfo {
            name: "lightstep".into(),
            kind: RouteKind::Otlp,
        },
        RouteInfo {
            name: "web".into(),
            kind: RouteKind::Plain,
        },
    ]
}

const POLICY: &str = r#"
roles:
  developer: { groups: [engineering] }
  sre: { groups: [sre] }
  auditor: { groups: [security-audit], email_domains: [audit.example.com] }
  ci: { clients: [ci-pipeline] }
  owner: { subjects: [root-sub], emails: [boss@example.com] }
rules:
  - id: read-code
    route: gogs
    roles: [developer, sre]
    git: { actions: [fetch], repos: ["**"] }
  - id: write-code
    route: gogs
    roles: [developer, sre]
    git: { actions: [push], repos: ["platform/*", "tools/*"] }
  - id: protect-main
    description: only sre may push to main
    route: gogs
    effect: deny
    roles: ["*"]
    unless: [sre]
    git: { actions: [push], repos: ["platform/*"], refs: [refs/heads/main] }
  - id: no-tag-deletes
    route: gogs
    effect: deny
    roles: ["*"]
    git: { actions: [push], refs: ["refs/tags/**"], updates: [delete] }
  - id: browse
    route: gogs
    roles: [developer, sre, auditor]
    gogs: { requests: [web, api] }
  - id: no-admin
    route: gogs
    effect: deny
    roles: ["*"]
    unless: [owner]
    paths: ["/admin/**", "/api/v1/admin/**"]
  - id: api-read-only
    route: gogs
    effect: deny
    roles: [auditor]
    methods: [POST, PUT, PATCH, DELETE]
    gogs: { requests: [api] }
  - id: ci-sends-traces
    route: lightstep
    roles: [ci]
    otlp: { signals: [traces, metrics], services: [checkout, "payments-*"] }
"#;

fn policy() -> CompiledPolicy {
    let loaded = parse_file(Path::new("policies/main.yaml"), POLICY).unwrap();
    compile::compile(&[loaded], &routes()).unwrap_or_else(|d| panic!("{d:#?}"))
}

fn subject(groups: &[&str]) -> Subject {
    Subject {
        sub: "s".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..Default::default()
    }
}

fn gogs(
    method: &str,
    path: &str,
    action: GogsAction,
    repo: Option<&str>,
    refs: &[(&str, UpdateKind)],
) -> PolicyRequest {
    PolicyRequest {
        route: "gogs".into(),
        method: method.into(),
        path: path.into(),
        resource: Resource::Gogs {
            action,
            repo: repo.map(str::to_string),
            refs: refs
                .iter()
                .map(|(n, k)| RefChange {
                    name: n.to_string(),
                    kind: *k,
                    old: String::new(),
                    new: String::new(),
                })
                .collect(),
        },
    }
}

fn decide(s: Option<&Subject>, r: &PolicyRequest) -> (bool, Option<String>) {
    let p = policy();
    let d = evaluate(&p, s.map(SubjectRef::from), r);
    (d.allowed, d.rule.map(|r| r.to_string()))
}

#[test]
fn decisions_follow_the_rules() {
    use GogsAction::*;
    use UpdateKind::*;
    let dev = subject(&["engineering"]);
    let sre = subject(&["sre"]);
    let auditor = subject(&["security-audit"]);
    let nobody = subject(&["marketing"]);
    let cases: Vec<(&str, &Subject, PolicyRequest, bool, Option<&str>)> = vec![
        (
            "developer clones",
            &dev,
            gogs(
                "GET",
                "/platform/app.git/info/refs",
                GitFetch,
                Some("platform/app"),
                &[],
            ),
            true,
            Some("read-code"),
        ),
        (
            "developer pushes a branch",
            &dev,
            gogs(
                "POST",
                "/platform/app.git/git-receive-pack",
                GitPush,
                Some("platform/app"),
                &[("refs/heads/feature", Update)],
            ),
            true,
            Some("write-code"),
        ),
        (
            "developer pushes main",
            &dev,
            gogs(
                "POST",
                "/platform/app.git/git-receive-pack",
                GitPush,
                Some("platform/app"),
                &[("refs/heads/main", Update)],
            ),
            false,
            Some("protect-main"),
        ),
        (
            "sre pushes main",
            &sre,
            gogs(
                "POST",
                "/platform/app.git/git-receive-pack",
                GitPush,
                Some("platform/app"),
                &[("refs/heads/main", Update)],
            ),
            true,
            Some("write-code"),
        ),
        (
            "main elsewhere is not protected",
            &dev,
            gogs(
                "POST",
                "/tools/x.git/git-receive-pack",
                GitPush,
                Some("tools/x"),
                &[("refs/heads/main", Update)],
            ),
            true,
            Some("write-code"),
        ),
        (
            "nobody deletes tags, not even sre",
            &sre,
            gogs(
                "POST",
                "/platform/app.git/git-receive-pack",
                GitPush,
                Some("platform/app"),
                &[("refs/tags/v1.0", Delete)],
            ),
            false,
            Some("no-tag-deletes"),
        ),
        (
            "tags may be created",
            &dev,
            gogs(
                "POST",
                "/platform/app.git/git-receive-pack",
                GitPush,
                Some("platform/app"),
                &[("refs/tags/v1.0", Create)],
            ),
            true,
            Some("write-code"),
        ),
        (
            "one bad ref spoils the push",
            &dev,
            gogs(
                "POST",
                "/platform/app.git/git-receive-pack",
                GitPush,
                Some("platform/app"),
                &[("refs/heads/feature", Update), ("refs/heads/main", Update)],
            ),
            false,
            Some("protect-main"),
        ),
        (
            "push advertisement is allowed to pushers",
            &dev,
            gogs(
                "GET",
                "/platform/app.git/info/refs",
                GitPush,
                Some("platform/app"),
                &[],
            ),
            true,
            Some("write-code"),
        ),
        (
            "no push to other repos",
            &dev,
            gogs(
                "POST",
                "/secret/x.git/git-receive-pack",
                GitPush,
                Some("secret/x"),
                &[("refs/heads/feature", Update)],
            ),
            false,
            None,
        ),
        (
            "repo globs are case-insensitive",
            &dev,
            gogs(
                "GET",
                "/Platform/App.git/info/refs",
                GitFetch,
                Some("platform/app"),
                &[],
            ),
            true,
            Some("read-code"),
        ),
        (
            "outsider can do nothing",
            &nobody,
            gogs("GET", "/platform/app", Web, Some("platform/app"), &[]),
            false,
            None,
        ),
        (
            "auditor browses",
            &auditor,
            gogs("GET", "/platform/app", Web, Some("platform/app"), &[]),
            true,
            Some("browse"),
        ),
        (
            "auditor cannot write through the API",
            &auditor,
            gogs(
                "POST",
                "/api/v1/repos/platform/app/issues",
                Api,
                Some("platform/app"),
                &[],
            ),
            false,
            Some("api-read-only"),
        ),
        (
            "auditor reads the API",
            &auditor,
            gogs(
                "GET",
                "/api/v1/repos/platform/app/issues",
                Api,
                Some("platform/app"),
                &[],
            ),
            true,
            Some("browse"),
        ),
        (
            "admin pages are closed",
            &sre,
            gogs("GET", "/admin/users", Web, None, &[]),
            false,
            Some("no-admin"),
        ),
        (
            "admin glob is anchored",
            &sre,
            gogs("GET", "/platform/admin/x", Web, Some("platform/admin"), &[]),
            true,
            Some("browse"),
        ),
    ];
    for (name, s, req, allowed, rule) in cases {
        assert_eq!(
            decide(Some(s), &req),
            (allowed, rule.map(str::to_string)),
            "{name}"
        );
    }
}

#[test]
fn unknown_routes_and_anonymous_callers_are_denied() {
    let p = policy();
    let req = PolicyRequest {
        route: "other".into(),
        method: "GET".into(),
        path: "/".into(),
        resource: Resource::None,
    };
    let d = evaluate(&p, Some(SubjectRef::from(&subject(&["sre"]))), &req);
    assert!(!d.allowed && d.rule.is_none());
    assert!(d.reasons[0].contains("no policy covers route"));
    let req = gogs(
        "GET",
        "/platform/app.git/info/refs",
        GogsAction::GitFetch,
        Some("platform/app"),
        &[],
    );
    assert!(!evaluate(&p, None, &req).allowed);
}

#[test]
fn roles_come_from_clients_subjects_and_verified_email() {
    let p = policy();
    let ci = Subject {
        sub: "ci-pipeline".into(),
        client_id: Some("ci-pipeline".into()),
        ..Default::default()
    };
    let otlp = |services: &[&str], signal| PolicyRequest {
        route: "lightstep".into(),
        method: "POST".into(),
        path: "/v1/traces".into(),
        resource: Resource::Otlp {
            signal,
            services: services.iter().map(|s| s.to_string()).collect(),
        },
    };
    assert!(
        evaluate(
            &p,
            Some((&ci).into()),
            &otlp(&["checkout", "payments-eu"], Signal::Traces)
        )
        .allowed
    );
    let d = evaluate(
        &p,
        Some((&ci).into()),
        &otlp(&["checkout", "billing"], Signal::Traces),
    );
    assert!(!d.allowed);
    assert_eq!(
        d.items
            .iter()
            .filter(|i| !i.allowed)
            .map(|i| i.item.as_str())
            .collect::<Vec<_>>(),
        ["billing"]
    );
    assert!(
        !evaluate(&p, Some((&ci).into()), &otlp(&["checkout"], Signal::Logs)).allowed,
        "logs are not in the rule"
    );
    // An export with no resources carries nothing: allowed if the caller may export at all.
    assert!(evaluate(&p, Some((&ci).into()), &otlp(&[], Signal::Traces)).allowed);

    let web = gogs(
        "GET",
        "/platform/app",
        GogsAction::Web,
        Some("platform/app"),
        &[],
    );
    let verified = Subject {
        sub: "x".into(),
        email: Some("Eve@Audit.Example.com".into()),
        email_verified: true,
        ..Default::default()
    };
    assert!(
        evaluate(&p, Some((&verified).into()), &web).allowed,
        "verified domain grants auditor"
    );
    let unverified = Subject {
        email_verified: false,
        ..verified.clone()
    };
    assert!(
        !evaluate(&p, Some((&unverified).into()), &web).allowed,
        "unverified email grants nothing"
    );
    let owner = Subject {
        sub: "root-sub".into(),
        groups: vec!["sre".into()],
        ..Default::default()
    };
    assert!(
        evaluate(
            &p,
            Some((&owner).into()),
            &gogs("GET", "/admin/users", GogsAction::Web, None, &[])
        )
        .allowed,
        "unless exempts the owner"
    );
}

#[test]
fn an_exact_email_grants_its_role_only_when_verified() {
    let p = policy();
    let roles = |email: &str, verified: bool| {
        let s = Subject {
            sub: "x".into(),
            email: Some(email.into()),
            email_verified: verified,
            ..Default::default()
        };
        evaluate::caller_roles(&p, SubjectRef::from(&s))
    };
    // `owner: { subjects: [root-sub], emails: [boss@example.com] }`: exact and
    // case-insensitive.
    assert_eq!(roles("boss@example.com", true), ["owner"]);
    assert_eq!(roles("Boss@EXAMPLE.com", true), ["owner"]);
    assert!(roles("boss@example.com", false).is_empty(), "unverified");
    for other in [
        "other@example.com",
        "boss@example.com.evil.test",
        "xboss@example.com",
        "boss@sub.example.com",
    ] {
        assert!(roles(other, true).is_empty(), "{other}");
    }

    // The role decides: owner is exempt from no-admin, so the verified address reaches the
    // admin pages the same caller is denied without it.
    let admin = gogs("GET", "/admin/users", GogsAction::Web, None, &[]);
    let caller = |verified: bool| Subject {
        sub: "x".into(),
        groups: vec!["sre".into()],
        email: Some("boss@example.com".into()),
        email_verified: verified,
        ..Default::default()
    };
    let d = evaluate(&p, Some((&caller(true)).into()), &admin);
    assert!(d.allowed, "{:?}", d.reasons);
    assert_eq!(d.rule.as_deref(), Some("browse"));
    let d = evaluate(&p, Some((&caller(false)).into()), &admin);
    assert!(!d.allowed);
    assert_eq!(d.rule.as_deref(), Some("no-admin"));
}

fn problems(text: &str) -> Vec<String> {
    let loaded = match parse_file(Path::new("p.yaml"), text) {
        Ok(l) => l,
        Err(d) => return vec![d.to_string()],
    };
    match compile::compile(&[loaded], &routes()) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn bad_policies_are_reported_with_file_line_and_reason() {
    let p = problems("rules:\n  - id: a\n    route: gogs\n    roles: [developers]\n");
    assert_eq!(
        p,
        ["p.yaml:4:13: rules[0] (a).roles: role \"developers\" is not defined (roles: )"]
    );
    let p = problems(
        "roles:\n  dev: { groups: [e] }\nrules:\n  - id: a\n    route: gitea\n    roles: [dev]\n",
    );
    assert_eq!(
        p,
        [
            "p.yaml:5:5: rules[0] (a): route \"gitea\" is not configured (routes: gogs, lightstep, web)"
        ]
    );
    let p = problems(
        "roles:\n  dev: { groups: [e] }\nrules:\n  - id: a\n    route: gogs\n    roles: [dev]\n  - id: a\n    route: gogs\n    roles: [dev]\n",
    );
    assert_eq!(
        p,
        ["p.yaml:7:5: rules[1] (a): rule id \"a\" is already used at p.yaml:4"]
    );
    // Schema errors: the key the parser names, the reason, the position once.
    let p = problems("rules:\n  - id: a\n    route: gogs\n    rolez: [dev]\n");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("p.yaml:4:5: rules[0]: unknown field `rolez`, expected one of"),
        "{p:#?}"
    );
    assert!(!p[0].contains("at line"), "{p:#?}");
    let p = problems("rules:\n  - id: a\n    route: gogs\n");
    assert_eq!(
        p,
        [
            "p.yaml:2:5: rules[0] (a): an allow rule must name its roles (add roles: [\"*\"] for any authenticated caller)"
        ]
    );
}

#[test]
fn every_problem_of_every_rule_is_reported_at_its_line_and_column() {
    let text = r#"roles:
  dev: { groups: [e] }
  nobody: {}
  "*": { groups: [x] }
  dev: { groups: [f] }
rules:
  - id: a
    route: gitea
    roles: [dev, devs]
    paths: ["x/**"]
    git: { refs: [main] }
  - id: a
    route: gogs
    roles: [dev]
    methods: [GET, FETCH]
  - id: ""
    route: lightstep
    roles: [dev]
    unless: ["*"]
    git: { actions: [fetch], updates: [delete] }
"#;
    let mut p = problems(text);
    p.sort();
    let mut want = vec![
        // Roles: a key written twice, a role for nobody, a reserved name.
        "p.yaml:5:3: roles.dev: is written twice; the first is at line 2",
        "p.yaml:3:3: roles.nobody: grants the role to nobody: list groups, clients, subjects, emails or email_domains",
        "p.yaml:4:3: roles.*: is a reserved role name",
        // An unknown route does not stop the other checks of its rule...
        "p.yaml:8:5: rules[0] (a): route \"gitea\" is not configured (routes: gogs, lightstep, web)",
        "p.yaml:9:18: rules[0] (a).roles: role \"devs\" is not defined (roles: dev, nobody)",
        "p.yaml:10:13: rules[0] (a).paths: \"x/**\" must start with '/' (paths are matched from the root)",
        "p.yaml:11:19: rules[0] (a).git.refs: \"main\" must be a full ref name (refs/heads/..., refs/tags/...)",
        // ...nor does a duplicate id...
        "p.yaml:12:5: rules[1] (a): rule id \"a\" is already used at p.yaml:7",
        "p.yaml:15:20: rules[1] (a).methods: \"FETCH\" is not a method the gateway passes (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, PROPFIND)",
        // ...nor an empty id.
        "p.yaml:16:5: rules[2] ().id: is empty: every rule needs an id",
        "p.yaml:19:14: rules[2] ().unless: \"*\" here would exempt every caller, so the rule could never match",
        "p.yaml:20:5: rules[2] ().git: route \"lightstep\" is of kind otlp, so a git condition can never match",
        "p.yaml:20:30: rules[2] ().git.updates: refs and updates only apply to pushes, and this rule covers fetch only",
    ];
    want.sort();
    assert_eq!(p, want);
}

#[test]
fn a_role_defined_in_two_files_names_both_places() {
    let a = parse_file(
        Path::new("a.yaml"),
        "# first\nroles:\n  dev: { groups: [e] }\n",
    )
    .unwrap();
    let b = parse_file(
        Path::new("b.yaml"),
        "roles:\n  ops: { groups: [o] }\n  dev: { groups: [f] }\n",
    )
    .unwrap();
    let p: Vec<String> = match compile::compile(&[a, b], &routes()) {
        Ok(_) => panic!("a role defined twice was accepted"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(
        p,
        ["b.yaml:3:3: roles.dev: role \"dev\" is also defined at a.yaml:3"]
    );
}

#[test]
fn too_many_roles_are_reported_at_the_first_one_over_the_limit() {
    let mut text = String::from("roles:\n");
    for i in 0..=compile::MAX_ROLES {
        text.push_str(&format!("  r{i:03}: {{ groups: [g{i}] }}\n"));
    }
    let p = problems(&text);
    assert_eq!(
        p,
        [format!(
            "p.yaml:{}:3: roles.r{:03}: {} roles defined; at most {} are supported",
            compile::MAX_ROLES + 2,
            compile::MAX_ROLES,
            compile::MAX_ROLES + 1,
            compile::MAX_ROLES
        )]
    );
}

#[test]
fn rules_that_can_never_match_are_refused() {
    let head = "roles:\n  dev: { groups: [e] }\nrules:\n  - id: a\n";
    for (body, want) in [
        (
            "    route: lightstep\n    roles: [dev]\n    git: { actions: [push] }\n",
            "git condition can never match",
        ),
        (
            "    route: gogs\n    roles: [dev]\n    otlp: { services: [x] }\n",
            "otlp condition can never match",
        ),
        (
            "    route: gogs\n    roles: [dev]\n    unless: [dev]\n",
            "exempts every role",
        ),
        ("    route: gogs\n    roles: []\n", "is empty"),
        (
            "    route: gogs\n    roles: [dev]\n    git: { actions: [fetch], refs: [refs/heads/main] }\n",
            "refs and updates only apply to pushes",
        ),
        (
            "    route: gogs\n    roles: [dev]\n    methods: [PUT]\n    git: { actions: [push] }\n",
            "git requests are GET or POST",
        ),
        (
            "    route: gogs\n    roles: [dev]\n    git: { refs: [main] }\n",
            "must be a full ref name",
        ),
        (
            "    route: gogs\n    roles: [dev]\n    paths: [\"/a/[\"]\n",
            "is not a valid glob",
        ),
        (
            "    route: gogs\n    roles: [dev]\n    methods: [FETCH]\n",
            "is not a method",
        ),
    ] {
        let p = problems(&format!("{head}{body}"));
        assert!(p.iter().any(|l| l.contains(want)), "{body}: {p:#?}");
    }
}

#[test]
fn path_globs_match_the_path_only_and_are_anchored() {
    let text = "roles:\n  dev: { groups: [e] }\nrules:\n  - id: docs\n    route: web\n    roles: [dev]\n    paths: [\"/docs/**\", \"/index.html\"]\n";
    let p = compile::compile(&[parse_file(Path::new("p.yaml"), text).unwrap()], &routes()).unwrap();
    let s = subject(&["e"]);
    let req = |path: &str| PolicyRequest {
        route: "web".into(),
        method: "GET".into(),
        path: path.into(),
        resource: Resource::None,
    };
    assert!(evaluate(&p, Some((&s).into()), &req("/docs/a/b.html")).allowed);
    assert!(evaluate(&p, Some((&s).into()), &req("/index.html")).allowed);
    assert!(!evaluate(&p, Some((&s).into()), &req("/x/docs/a")).allowed);
    assert!(!evaluate(&p, Some((&s).into()), &req("/index.html.bak")).allowed);
}
