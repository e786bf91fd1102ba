//! Policy files: any text is either a policy or a list of problems with places, never a
//! panic; a policy that compiles evaluates any request without panicking.
#![no_main]

use std::path::Path;

use gatehouse::config::RouteKind;
use gatehouse::policy::{
    self, GogsAction, PolicyRequest, RefChange, Resource, Subject, SubjectRef, UpdateKind,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let routes = vec![
        policy::RouteInfo {
            name: "gogs".into(),
            kind: RouteKind::Gogs,
        },
        policy::RouteInfo {
            name: "lightstep".into(),
            kind: RouteKind::Otlp,
        },
    ];
    let Ok(loaded) = policy::parse_file(Path::new("fuzz.yaml"), text) else {
        return;
    };
    let Ok(compiled) = policy::compile::compile(&[loaded], &routes) else {
        return;
    };
    let caller = Subject {
        sub: "s".into(),
        groups: vec!["engineering".into(), "sre".into()],
        ..Default::default()
    };
    let push = PolicyRequest {
        route: "gogs".into(),
        method: "POST".into(),
        path: "/platform/app.git/git-receive-pack".into(),
        resource: Resource::Gogs {
            action: GogsAction::GitPush,
            repo: Some("platform/app".into()),
            refs: vec![RefChange {
                name: "refs/heads/main".into(),
                kind: UpdateKind::Update,
                old: String::new(),
                new: String::new(),
            }],
        },
    };
    let _ = policy::evaluate(&compiled, Some(SubjectRef::from(&caller)), &push);
    let _ = policy::evaluate(&compiled, None, &push);
});
