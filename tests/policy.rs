//! Authorization end to end: real people (device-grant tokens from a real provider), real
//! `git push` through the gateway to `git http-backend`, policies edited while serving.

mod support;

use std::path::Path;
use std::time::Duration;

use support::oidc::{CI_CLIENT, CLI_CLIENT, OidcProvider, PASSWORD};
use support::raw::exchange;
use support::secrets::Secrets;
use support::{
    DevCa, GatewayBuilder, GitServer, HOST, RecordingUpstream, Reply, TestGateway, git, otlp_body,
    run_with_timeout,
};

const POLICY: &str = r#"
roles:
  developer: { groups: [engineering] }
  sre: { groups: [sre] }
  ci: { clients: [ci-pipeline] }
rules:
  - id: read-code
    route: gogs
    roles: [developer, sre]
    git: { actions: [fetch] }
  - id: write-code
    route: gogs
    roles: [developer, sre]
    git: { actions: [push], repos: ["platform/*"] }
  - id: protect-main
    description: only sre may push to main
    route: gogs
    effect: deny
    roles: ["*"]
    unless: [sre]
    git: { actions: [push], refs: [refs/heads/main] }
  - id: browse
    route: gogs
    roles: [developer]
    gogs: { requests: [web] }
  - id: no-admin
    description: site administration is closed
    route: gogs
    effect: deny
    roles: ["*"]
    paths: ["/admin/**"]
  - id: ci-traces
    route: lightstep
    roles: [ci]
    otlp: { services: [checkout] }
"#;

/// An access token for `user` from the device grant, completed in the browser.
fn user_token(provider: &OidcProvider, user: &str) -> String {
    let grant = provider.device_authorize(CLI_CLIENT);
    provider
        .device_complete(&grant, user, PASSWORD)
        .expect("device login");
    provider.device_token(&grant).access_token
}

struct Setup {
    ca: DevCa,
    provider: OidcProvider,
    secrets: Secrets,
    server: GitServer,
    up: RecordingUpstream,
    gw: TestGateway,
    _repos: tempfile::TempDir,
}

async fn setup() -> Setup {
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    let secrets = Secrets::new(&provider, POLICY);
    let repos = tempfile::tempdir().unwrap();
    let server = GitServer::start(repos.path()).await;
    server.create_repo("platform/app.git");
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .toml(&secrets.identity(&provider, "", &[support::oidc::AUDIENCE]))
        .route_with(
            "gogs",
            "gogs",
            &[HOST],
            &server.url(),
            &secrets.gogs_extra(),
        )
        .route_with(
            "lightstep",
            "otlp",
            &["otlp.example.test"],
            &up.url(),
            &secrets.otlp_extra(),
        )
        .start(&ca);
    Setup {
        ca,
        provider,
        secrets,
        server,
        up,
        gw,
        _repos: repos,
    }
}

fn git_as(s: &Setup, token: &str, cwd: &Path, args: &[&str]) -> std::process::Command {
    let header = format!("http.extraHeader=Authorization: Bearer {token}");
    let mut all = vec!["-c", &header];
    all.extend_from_slice(args);
    git(&s.ca, cwd, s.gw.port(), &all)
}

fn commit(s: &Setup, token: &str, dir: &Path, file: &str) {
    std::fs::write(dir.join(file), file).unwrap();
    for args in [vec!["add", file], vec!["commit", "--quiet", "-m", file]] {
        let (ok, _, err) = run_with_timeout(&mut git_as(s, token, dir, &args), 30);
        assert!(ok, "{err}");
    }
}

fn server_ref(s: &Setup, name: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .args([
            "--git-dir",
            s.server.root.join("platform/app.git").to_str().unwrap(),
            "rev-parse",
            "--verify",
            "--quiet",
            name,
        ])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_protected_branch_is_refused_in_gits_own_words() {
    let s = setup().await;
    let alice = tokio::task::block_in_place(|| user_token(&s.provider, "alice"));
    let bob = tokio::task::block_in_place(|| user_token(&s.provider, "bob"));
    let work = tempfile::tempdir().unwrap();
    let url = s.gw.url("/platform/app.git");
    let repo = work.path().join("app");
    tokio::task::block_in_place(|| {
        let (ok, _, err) = run_with_timeout(
            &mut git_as(
                &s,
                &alice,
                work.path(),
                &["clone", "--quiet", &url, repo.to_str().unwrap()],
            ),
            60,
        );
        assert!(ok, "alice cannot clone: {err}\n{}", s.gw.log());
        commit(&s, &alice, &repo, "feature.txt");

        // A feature branch lands.
        let (ok, _, err) = run_with_timeout(
            &mut git_as(
                &s,
                &alice,
                &repo,
                &["push", "origin", "HEAD:refs/heads/feature"],
            ),
            60,
        );
        assert!(ok, "{err}");
        assert!(server_ref(&s, "refs/heads/feature").is_some());

        // main is refused, and git says why.
        let (ok, _, err) = run_with_timeout(
            &mut git_as(
                &s,
                &alice,
                &repo,
                &["push", "origin", "HEAD:refs/heads/main"],
            ),
            60,
        );
        assert!(!ok, "alice pushed to main");
        assert!(err.contains("! [remote rejected] HEAD -> main (denied by policy protect-main: only sre may push to main)"), "{err}");
        assert!(
            server_ref(&s, "refs/heads/main").is_none(),
            "the refused push landed"
        );

        // bob (sre) pushes main.
        let (ok, _, err) = run_with_timeout(
            &mut git_as(&s, &bob, &repo, &["push", "origin", "HEAD:refs/heads/main"]),
            60,
        );
        assert!(ok, "bob could not push main: {err}");
        assert!(server_ref(&s, "refs/heads/main").is_some());
    });
    assert!(s.gw.metric(r#"gatehouse_policy_decisions_total{effect="deny",route="gogs"}"#) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edited_while_serving_takes_effect_and_a_broken_edit_keeps_the_last_good_one() {
    let s = setup().await;
    let carol = tokio::task::block_in_place(|| user_token(&s.provider, "carol"));
    let hp = format!("{HOST}:{}", s.gw.port());
    let clone_probe = |token: &str| {
        format!(
            "GET /platform/app.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: {hp}\r\nAuthorization: Bearer {token}\r\nUser-Agent: git/2.47\r\nConnection: close\r\n\r\n"
        )
    };
    // carol (security-audit) holds no role: refused.
    let r = exchange(s.gw.https, &s.ca.ca(), HOST, clone_probe(&carol).as_bytes()).await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert!(r.text.contains("no policy allows this"), "{}", r.text);

    // Grant auditors read access, without a restart.
    let policy_file = Path::new(&s.secrets.path("policies")).join("policy.yaml");
    let granted = POLICY
        .replace(
            "  ci: { clients: [ci-pipeline] }",
            "  ci: { clients: [ci-pipeline] }\n  auditor: { groups: [security-audit] }",
        )
        .replace(
            "    roles: [developer, sre]\n    git: { actions: [fetch] }",
            "    roles: [developer, sre, auditor]\n    git: { actions: [fetch] }",
        );
    std::fs::write(&policy_file, &granted).unwrap();
    let ca = s.ca.ca();
    let addr = s.gw.https;
    s.gw.eventually(10, "policy reloaded", || {
        s.gw.metric(r#"gatehouse_policy_reloads_total{result="success"}"#) >= 1.0
    });
    let r = exchange(addr, &ca, HOST, clone_probe(&carol).as_bytes()).await;
    assert_eq!(r.status(), Some(200), "{}", r.text);

    // A broken edit: the last good policy stays, the failure is visible.
    std::fs::write(
        &policy_file,
        granted.replace(
            "roles: [developer, sre, auditor]",
            "roles: [developer, sre, auditors]",
        ),
    )
    .unwrap();
    s.gw.eventually(10, "failed reload counted", || {
        s.gw.metric(r#"gatehouse_policy_reloads_total{result="error"}"#) >= 1.0
    });
    let r = exchange(addr, &ca, HOST, clone_probe(&carol).as_bytes()).await;
    assert_eq!(
        r.status(),
        Some(200),
        "a broken policy replaced the good one: {}",
        r.text
    );
    let log = s.gw.log();
    assert!(
        log.contains("role \\\"auditors\\\" is not defined")
            || log.contains("role \"auditors\" is not defined"),
        "{log}"
    );
    assert!(log.contains("policy.yaml:"), "{log}");

    // SIGHUP reloads too: put the original back and signal.
    std::fs::write(&policy_file, POLICY).unwrap();
    s.gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.gw.eventually(10, "carol refused again", || {
        let probe = clone_probe(&carol);
        let r = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(exchange(addr, &ca, HOST, probe.as_bytes()))
        });
        r.status() == Some(403)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_page_is_readable_and_never_reaches_gogs() {
    let s = setup().await;
    let alice = tokio::task::block_in_place(|| user_token(&s.provider, "alice"));
    let carol = tokio::task::block_in_place(|| user_token(&s.provider, "carol"));
    let hp = format!("{HOST}:{}", s.gw.port());
    let page = |token: &str| {
        format!(
            "GET /platform/app HTTP/1.1\r\nHost: {hp}\r\nAccept: text/html\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
    };
    // alice (developer) is let through; the stand-in for Gogs has no web pages and says 404.
    let r = exchange(s.gw.https, &s.ca.ca(), HOST, page(&alice).as_bytes()).await;
    assert_eq!(r.status(), Some(404), "{}", r.text);
    assert_eq!(
        s.server
            .requests()
            .iter()
            .filter(|(t, _)| t == "/platform/app")
            .count(),
        1
    );
    // carol (security-audit) holds no role that may browse.
    let r = exchange(s.gw.https, &s.ca.ca(), HOST, page(&carol).as_bytes()).await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert!(
        r.text.contains("<title>Access denied</title>") && r.text.contains("no policy allows this"),
        "{}",
        r.text
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    // Nothing more reached Gogs for carol's page.
    assert_eq!(
        s.server
            .requests()
            .iter()
            .filter(|(t, _)| t == "/platform/app")
            .count(),
        1,
        "a refused page reached Gogs"
    );

    // A request refused by a named deny rule, from a client that is not a browser: plain
    // text naming the rule, the reason and the request id.
    let admin = format!(
        "GET /admin/users HTTP/1.1\r\nHost: {hp}\r\nAuthorization: Bearer {alice}\r\nUser-Agent: curl/8.5\r\nConnection: close\r\n\r\n"
    );
    let r = exchange(s.gw.https, &s.ca.ca(), HOST, admin.as_bytes()).await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{}",
        r.text
    );
    let (_, body) = r.text.split_once("\r\n\r\n").expect("a body");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("403 Forbidden: denied by policy no-admin: site administration is closed"),
        "{body}"
    );
    assert!(lines.contains(&"rule: no-admin"), "{body}");
    let id = r.header("x-request-id").expect("x-request-id");
    assert!(
        lines.contains(&format!("request id: {id}").as_str()),
        "{body}"
    );
    assert!(
        !s.server
            .requests()
            .iter()
            .any(|(t, _)| t.starts_with("/admin")),
        "a refused request reached Gogs"
    );
    // Refused because nothing allows it: the line says so instead of naming a rule.
    let plain = format!(
        "GET /platform/app HTTP/1.1\r\nHost: {hp}\r\nAuthorization: Bearer {carol}\r\nUser-Agent: curl/8.5\r\nConnection: close\r\n\r\n"
    );
    let r = exchange(s.gw.https, &s.ca.ca(), HOST, plain.as_bytes()).await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert!(r.text.contains("\nrule: default deny\n"), "{}", r.text);
}

/// A minimal OTLP/HTTP protobuf export: one resource per service name, no spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_may_send_telemetry_only_for_its_own_services() {
    let s = setup().await;
    let token = tokio::task::block_in_place(|| {
        s.provider
            .client_credentials_token(CI_CLIENT, &s.provider.ci_secret, &[])
    });
    let send = |services: &[&str]| {
        let body = otlp_body(services);
        let mut req = format!(
            "POST /v1/traces HTTP/1.1\r\nHost: otlp.example.test:{}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            s.gw.port(),
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        req
    };
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        "otlp.example.test",
        &send(&["checkout"]),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(
        s.up.requests()[0].body,
        otlp_body(&["checkout"]),
        "the export was not forwarded as sent"
    );
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        "otlp.example.test",
        &send(&["checkout", "billing"]),
    )
    .await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert_eq!(
        s.up.requests().len(),
        1,
        "a refused export reached Lightstep"
    );
    // A body that is not OTLP: 400, not forwarded.
    let mut garbage = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: otlp.example.test:{}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
        s.gw.port()
    )
    .into_bytes();
    garbage.extend_from_slice(&[0x0a, 0xff, 0x01]);
    let r = exchange(s.gw.https, &s.ca.ca(), "otlp.example.test", &garbage).await;
    assert_eq!(r.status(), Some(400), "{}", r.text);
    assert_eq!(s.up.requests().len(), 1);
}

/// A request keeps the policy it was decided under: one waiting on a slow upstream when a
/// stricter policy is loaded still completes, and the next request is judged by the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_keeps_the_policy_it_was_decided_under() {
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    // This gateway has no lightstep route.
    let policy = POLICY.split("  - id: ci-traces").next().unwrap_or(POLICY);
    let secrets = Secrets::new(&provider, policy);
    let up = RecordingUpstream::start(Reply::Delay(Duration::from_secs(6))).await;
    let gw = GatewayBuilder::new()
        .toml(&secrets.identity(&provider, "", &[support::oidc::AUDIENCE]))
        .route_with("gogs", "gogs", &[HOST], &up.url(), &secrets.gogs_extra())
        .start(&ca);
    let alice = tokio::task::block_in_place(|| user_token(&provider, "alice"));
    let hp = format!("{HOST}:{}", gw.port());
    let probe = format!(
        "GET /platform/app.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: {hp}\r\nAuthorization: Bearer {alice}\r\nUser-Agent: git/2.47\r\nConnection: close\r\n\r\n"
    );
    let (addr, ca_file) = (gw.https, ca.ca());
    let in_flight = {
        let (probe, ca_file) = (probe.clone(), ca_file.clone());
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut s = support::raw::connect(addr, &ca_file, HOST).await;
            s.write_all(probe.as_bytes()).await.expect("write");
            support::raw::read_response(&mut s, Duration::from_secs(15)).await
        })
    };
    // Decided and forwarded: the upstream holds it for 6 s.
    gw.eventually(5, "the request reached the upstream", || {
        !up.requests().is_empty()
    });

    // Fetching is no longer allowed for anyone.
    let policy_file = Path::new(&secrets.path("policies")).join("policy.yaml");
    std::fs::write(
        &policy_file,
        policy.replace(
            "    git: { actions: [fetch] }",
            "    git: { actions: [fetch], repos: [nothing/*] }",
        ),
    )
    .unwrap();
    gw.eventually(10, "policy reloaded", || {
        gw.metric(r#"gatehouse_policy_reloads_total{result="success"}"#) >= 1.0
    });
    assert!(
        !in_flight.is_finished(),
        "the reload came too late to test anything"
    );
    let r = in_flight.await.unwrap();
    assert_eq!(
        r.status(),
        Some(200),
        "the in-flight request was cut: {}",
        r.text
    );
    let r = exchange(addr, &ca_file, HOST, probe.as_bytes()).await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert_eq!(
        up.requests().len(),
        1,
        "only the first request reached the upstream"
    );
}
