//! Policy evaluation with a large rule set (1,000 rules, 50 roles), and push-command parsing
//! whose cost must not depend on the size of the pack behind the commands.
//!
//! `cargo bench --bench policy`

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gatehouse::config::RouteKind;
use gatehouse::policy::{
    self, GogsAction, PolicyRequest, RefChange, Resource, Subject, SubjectRef, UpdateKind,
};

/// 50 roles (one group each) and 1,000 rules spread over them: per-team repository rules,
/// protected branches, tag rules and path rules, as a large organisation would write them.
fn big_policy() -> String {
    let mut y = String::from("roles:\n");
    for r in 0..50 {
        y.push_str(&format!("  team{r}: {{ groups: [group-{r}] }}\n"));
    }
    y.push_str("rules:\n");
    for i in 0..1000 {
        let team = i % 50;
        let text = match i % 5 {
            0 => format!(
                "  - id: fetch-{i}\n    route: gogs\n    roles: [team{team}]\n    git: {{ actions: [fetch], repos: [\"team{team}/*\"] }}\n"
            ),
            1 => format!(
                "  - id: push-{i}\n    route: gogs\n    roles: [team{team}]\n    git: {{ actions: [push], repos: [\"team{team}/repo-{i}*\"] }}\n"
            ),
            2 => format!(
                "  - id: protect-{i}\n    route: gogs\n    effect: deny\n    roles: [\"*\"]\n    unless: [team{}]\n    git: {{ actions: [push], repos: [\"team{team}/*\"], refs: [refs/heads/release-{i}] }}\n",
                (team + 1) % 50
            ),
            3 => format!(
                "  - id: tags-{i}\n    route: gogs\n    effect: deny\n    roles: [team{team}]\n    git: {{ actions: [push], refs: [\"refs/tags/v{i}.*\"], updates: [delete] }}\n"
            ),
            _ => format!(
                "  - id: web-{i}\n    route: gogs\n    roles: [team{team}]\n    paths: [\"/team{team}/docs-{i}/**\"]\n"
            ),
        };
        y.push_str(&text);
    }
    y
}

fn bench_evaluate(c: &mut Criterion) {
    let routes = vec![policy::RouteInfo {
        name: "gogs".into(),
        kind: RouteKind::Gogs,
    }];
    let loaded = policy::parse_file(Path::new("big.yaml"), &big_policy()).expect("parse");
    let compiled = policy::compile::compile(&[loaded], &routes).expect("compile");
    assert_eq!(compiled.rule_count, 1000);
    let caller = Subject {
        sub: "alice".into(),
        groups: vec!["group-1".into(), "group-10".into(), "unrelated".into()],
        ..Default::default()
    };
    let push = PolicyRequest {
        route: "gogs".into(),
        method: "POST".into(),
        path: "/team1/repo-1.git/git-receive-pack".into(),
        resource: Resource::Gogs {
            action: GogsAction::GitPush,
            repo: Some("team1/repo-1".into()),
            refs: vec![RefChange {
                name: "refs/heads/feature".into(),
                kind: UpdateKind::Update,
                old: String::new(),
                new: String::new(),
            }],
        },
    };
    let fetch = PolicyRequest {
        route: "gogs".into(),
        method: "GET".into(),
        path: "/team10/anything.git/info/refs".into(),
        resource: Resource::Gogs {
            action: GogsAction::GitFetch,
            repo: Some("team10/anything".into()),
            refs: Vec::new(),
        },
    };
    let denied = PolicyRequest {
        route: "gogs".into(),
        method: "GET".into(),
        path: "/team33/secret".into(),
        resource: Resource::Gogs {
            action: GogsAction::Web,
            repo: Some("team33/secret".into()),
            refs: Vec::new(),
        },
    };
    let mut g = c.benchmark_group("policy/evaluate-1000-rules-50-roles");
    for (name, req, allowed) in [
        ("push", &push, true),
        ("fetch", &fetch, true),
        ("denied-web", &denied, false),
    ] {
        assert_eq!(
            policy::evaluate(&compiled, Some(SubjectRef::from(&caller)), req).allowed,
            allowed,
            "{name}"
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                policy::evaluate(
                    black_box(&compiled),
                    Some(SubjectRef::from(&caller)),
                    black_box(req),
                )
            })
        });
    }
    g.finish();
}

fn bench_push_commands(c: &mut Criterion) {
    let zero = "0".repeat(40);
    let new = "a".repeat(40);
    let line =
        format!("{zero} {new} refs/heads/main\0report-status side-band-64k agent=git/2.47.3\n");
    let mut commands = format!("{:04x}{line}", line.len() + 4).into_bytes();
    commands.extend_from_slice(b"0000");
    let mut g = c.benchmark_group("pktline/commands-before-pack");
    for pack_mib in [0usize, 1, 64] {
        let mut body = commands.clone();
        body.extend(std::iter::repeat_n(0x5au8, pack_mib << 20));
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{pack_mib}MiB-pack")),
            &body,
            |b, body| {
                b.iter(|| {
                    gatehouse::classify::pktline::parse_commands(black_box(body)).expect("commands")
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench_evaluate, bench_push_commands);
criterion_main!(benches);
