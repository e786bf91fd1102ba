//! The audit log end to end: real callers (tokens from a real provider, real `git`), the
//! real gateway, the records it writes, and `gatehouse audit verify` over them; a disk that
//! fills up (a small tmpfs), and a gateway killed mid-stream.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse::audit::Record;
use support::oidc::{CI_CLIENT, CLI_CLIENT, OidcProvider, PASSWORD};
use support::raw::exchange;
use support::secrets::{BROKER_TOKEN, LIGHTSTEP_TOKEN, Secrets};
use support::upstream::Hook;
use support::{
    DevCa, GatewayBuilder, GitServer, HOST, RecordingUpstream, Reply, TestGateway, curl, git,
    otlp_body, run_with_timeout,
};

const POLICY: &str = r#"
roles:
  developer: { groups: [engineering] }
  sre: { groups: [sre] }
  ci: { clients: [ci-pipeline] }
  auditor: { groups: [security-audit] }
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
    route: gogs
    effect: deny
    roles: ["*"]
    unless: [sre]
    git: { actions: [push], refs: [refs/heads/main] }
  - id: ci-traces
    route: lightstep
    roles: [ci]
    otlp: { services: [checkout] }
  - id: audit-export
    route: gatehouse
    roles: [auditor]
    methods: [GET]
    paths: ["/.gatehouse/audit/export"]
"#;

/// Every record in `dir`, in file and line order.
fn records(dir: &Path) -> Vec<Record> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let n = text.lines().count();
        for (i, line) in text.lines().enumerate() {
            if i + 1 == n && !text.ends_with('\n') {
                // A record cut short by a crash: not a record.
                continue;
            }
            let r: Record = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}: {line}", f.display(), i + 1));
            out.push(r);
        }
    }
    out
}

fn all_text(dir: &Path) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        text.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap_or_default());
    }
    text
}

/// `gatehouse audit verify`: (success, stdout).
fn verify(dir: &Path, pubkey: &Path) -> (bool, String) {
    let (ok, out, err) = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["audit", "verify"])
            .arg(dir)
            .arg("--pubkey")
            .arg(pubkey),
        60,
    );
    (ok, format!("{out}{err}"))
}

fn user_token(provider: &OidcProvider, user: &str) -> String {
    let grant = provider.device_authorize(CLI_CLIENT);
    provider
        .device_complete(&grant, user, PASSWORD)
        .expect("device login");
    provider.device_token(&grant).access_token
}

fn git_as(ca: &DevCa, gw: &TestGateway, token: &str, cwd: &Path, args: &[&str]) -> (bool, String) {
    let header = format!("http.extraHeader=Authorization: Bearer {token}");
    let mut all = vec!["-c", &header];
    all.extend_from_slice(args);
    let (ok, out, err) = run_with_timeout(&mut git(ca, cwd, gw.port(), &all), 60);
    (ok, format!("{out}{err}"))
}

fn the<'a>(records: &'a [Record], what: &str, f: impl Fn(&Record) -> bool) -> &'a Record {
    let found: Vec<&Record> = records.iter().filter(|r| f(r)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one record for {what}, got {}: {found:#?}",
        found.len()
    );
    found[0]
}

fn git_push_of(r: &Record, refname: &str) -> bool {
    r.kind == "request"
        && r.action.as_ref().is_some_and(|a| {
            a.kind.as_deref() == Some("git_push") && a.refs.iter().any(|x| x.name == refname)
        })
}

fn otlp_request(port: u16, token: &str, services: &[&str], request_id: &str) -> Vec<u8> {
    let body = otlp_body(services);
    let mut req = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: otlp.example.test:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx-request-id: {request_id}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_recorded_with_identity_and_outcome_and_the_log_verifies() {
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    let secrets = Secrets::new(&provider, POLICY);
    let repos = tempfile::tempdir().unwrap();
    let server = GitServer::start(repos.path()).await;
    server.create_repo("platform/app.git");

    // The OTLP upstream looks in the audit log the moment a request reaches it: the decision
    // must already be there.
    let audit_dir: Arc<Mutex<Option<PathBuf>>> = Arc::default();
    let seen_before_forwarding: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let hook = {
        let dir = audit_dir.clone();
        let seen = seen_before_forwarding.clone();
        Hook(Arc::new(move |headers: &http::HeaderMap| {
            let id = headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let dir = dir.lock().unwrap().clone().expect("audit dir");
            let on_record = records(&dir).iter().any(|r| {
                r.kind == "request"
                    && r.request_id.as_deref() == Some(id.as_str())
                    && r.decision.as_ref().is_some_and(|d| d.effect == "allow")
            });
            seen.lock().unwrap().push((id, on_record));
        }))
    };
    let up = RecordingUpstream::start(Reply::Hook(hook)).await;
    let mut gw = GatewayBuilder::new()
        // The test sends its own request ids, as a load balancer in front would.
        .server("trusted_proxies = [\"127.0.0.1\"]")
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
    *audit_dir.lock().unwrap() = Some(gw.audit_dir());

    let (alice, ci) = tokio::task::block_in_place(|| {
        (
            user_token(&provider, "alice"),
            provider.client_credentials_token(CI_CLIENT, &provider.ci_secret, &[]),
        )
    });

    // alice clones, pushes a branch (allowed) and main (refused by protect-main).
    let work = tempfile::tempdir().unwrap();
    let url = format!("https://{HOST}:{}/platform/app.git", gw.port());
    let (ok, out) = tokio::task::block_in_place(|| {
        git_as(
            &ca,
            &gw,
            &alice,
            work.path(),
            &["clone", "--quiet", &url, "app"],
        )
    });
    assert!(ok, "{out}");
    let app = work.path().join("app");
    std::fs::write(app.join("a.txt"), "a").unwrap();
    tokio::task::block_in_place(|| {
        for args in [
            vec!["add", "a.txt"],
            vec!["commit", "--quiet", "-m", "a"],
            vec!["checkout", "--quiet", "-b", "feature"],
        ] {
            let (ok, out) = git_as(&ca, &gw, &alice, &app, &args);
            assert!(ok, "{out}");
        }
        let (ok, out) = git_as(
            &ca,
            &gw,
            &alice,
            &app,
            &["push", "--quiet", "origin", "feature"],
        );
        assert!(ok, "{out}");
        let (ok, out) = git_as(&ca, &gw, &alice, &app, &["push", "origin", "feature:main"]);
        assert!(!ok && out.contains("protect-main"), "{out}");
    });

    // CI sends traces for its service (allowed) and for another (refused).
    let r = exchange(
        gw.https,
        &ca.ca(),
        "otlp.example.test",
        &otlp_request(gw.port(), &ci, &["checkout"], "audit-test-otlp-1"),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let r = exchange(
        gw.https,
        &ca.ca(),
        "otlp.example.test",
        &otlp_request(
            gw.port(),
            &ci,
            &["checkout", "billing"],
            "audit-test-otlp-2",
        ),
    )
    .await;
    assert_eq!(r.status(), Some(403), "{}", r.text);

    // No credentials; a forged token; a malformed request; a long, hostile path.
    let (_, code, _) = run_with_timeout(
        &mut curl(
            &ca,
            gw.port(),
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &gw.url("/api/v1/user"),
            ],
        ),
        30,
    );
    assert_eq!(code, "401");
    let (_, code, _) = run_with_timeout(
        &mut curl(
            &ca,
            gw.port(),
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2ln",
                &gw.url("/api/v1/user"),
            ],
        ),
        30,
    );
    assert_eq!(code, "401");
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!(
            "GET / HTTP/1.1\r\nHost: {HOST}:{p}\r\nHost: {HOST}:{p}\r\nConnection: close\r\n\r\n",
            p = gw.port()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(400));
    let hostile = format!("/x%0a%22%7d%7b%22kind%22:%22admin%22/{}", "y".repeat(5000));
    let (_, code, _) = run_with_timeout(
        &mut curl(
            &ca,
            gw.port(),
            &["-o", "/dev/null", "-w", "%{http_code}", &gw.url(&hostile)],
        ),
        30,
    );
    // Encoded control characters in a path are refused outright (and recorded).
    assert_eq!(code, "400");

    // carol (group security-audit, role auditor) exports over HTTPS; alice may not; a bad
    // query is refused precisely. Each of these is itself on record.
    let carol = tokio::task::block_in_place(|| user_token(&provider, "carol"));
    let export = |token: &str, query: &str| {
        let auth = format!("Authorization: Bearer {token}");
        let url = gw.url(&format!("/.gatehouse/audit/export?{query}"));
        let (_, out, err) = run_with_timeout(
            &mut curl(
                &ca,
                gw.port(),
                &["-H", &auth, "-w", "\n%{http_code} %{content_type}", &url],
            ),
            60,
        );
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
        (body.to_string(), status.to_string(), err)
    };
    let range = "since=2000-01-01&until=2100-01-01";
    let (csv, status, err) = export(&carol, &format!("{range}&format=csv&route=gogs"));
    assert_eq!(
        status, "200 text/csv; charset=utf-8; header=present",
        "{csv}{err}"
    );
    let rows = support::csv::parse_csv(&csv);
    assert_eq!(rows[0], gatehouse::audit::export::CSV_COLUMNS, "header row");
    let col = |name: &str| rows[0].iter().position(|c| c == name).unwrap();
    assert!(rows.len() > 3, "{csv}");
    assert!(rows[1..].iter().all(|r| r[col("route")] == "gogs"), "{csv}");
    assert!(
        rows[1..].iter().any(|r| r[col("username")] == "alice"
            && r[col("action")] == "git_push"
            && r[col("rule")] == "write-code"
            && r[col("status")] == "200"),
        "{csv}"
    );
    let (text, status, _) = export(&alice, &format!("{range}&format=csv"));
    assert!(status.starts_with("403 "), "{status} {text}");
    let (text, status, _) = export(&carol, &format!("{range}&format=xml"));
    assert!(
        status.starts_with("400 ") && text.contains("format"),
        "{status} {text}"
    );

    let status = gw.stop(30);
    assert!(status.success(), "{}", gw.log());

    // The log verifies, signatures included.
    let dir = gw.audit_dir();
    let (ok, out) = verify(&dir, &gw.audit_key());
    assert!(ok, "{out}");
    assert!(
        out.contains("OK:") && out.contains("signatures checked"),
        "{out}"
    );

    let all = records(&dir);
    assert_eq!(all.first().unwrap().kind, "config_reload", "{:#?}", all[0]);
    assert_eq!(all.last().unwrap().kind, "admin");
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "sequence numbers run without gaps");
        assert_eq!(r.replica, "gw");
        assert!(r.time.ends_with('Z') && r.time.len() == 27, "{}", r.time);
    }

    // Every outcome completes exactly one earlier request record, and every request that
    // was forwarded has exactly one outcome.
    for (i, o) in all.iter().enumerate().filter(|(_, r)| r.kind == "outcome") {
        let reference = o.ref_id.as_deref().expect("outcome ref");
        let req = all[..i]
            .iter()
            .find(|r| r.id == reference)
            .unwrap_or_else(|| panic!("outcome {} names no earlier record", o.id));
        assert_eq!(req.request_id, o.request_id);
        assert!(
            req.status.is_none(),
            "a forwarded request's record is written before its status is known"
        );
    }
    for req in all
        .iter()
        .filter(|r| r.kind == "request" && r.status.is_none())
    {
        let outcomes = all
            .iter()
            .filter(|o| o.ref_id.as_deref() == Some(req.id.as_str()))
            .count();
        assert_eq!(outcomes, 1, "request {} has {outcomes} outcomes", req.id);
    }

    // The allowed push: alice, her groups, the ref and both SHAs; then its outcome.
    let push = the(&all, "the feature push", |r| {
        git_push_of(r, "refs/heads/feature")
    });
    let id = push.identity.as_ref().expect("identity");
    assert_eq!(id.username.as_deref(), Some("alice"));
    assert_eq!(id.groups, ["engineering"]);
    assert_eq!(id.method, "bearer");
    assert_eq!(id.issuer.as_deref(), Some(provider.issuer.as_str()));
    let action = push.action.as_ref().unwrap();
    assert_eq!(action.repository.as_deref(), Some("platform/app"));
    assert_eq!(action.refs[0].kind, "create");
    assert_eq!(action.refs[0].new.len(), 40);
    let d = push.decision.as_ref().unwrap();
    assert_eq!(
        (d.effect.as_str(), d.rule.as_deref()),
        ("allow", Some("write-code"))
    );
    assert_eq!(push.route.as_deref(), Some("gogs"));
    assert_eq!(push.method.as_deref(), Some("POST"));
    assert_eq!(
        push.path.as_deref(),
        Some("/platform/app.git/git-receive-pack")
    );
    let outcome = the(&all, "the feature push outcome", |r| {
        r.ref_id.as_deref() == Some(push.id.as_str())
    });
    assert_eq!(outcome.status, Some(200));
    assert!(
        outcome.bytes_in.unwrap() > 0 && outcome.bytes_out.unwrap() > 0,
        "{outcome:#?}"
    );
    assert!(outcome.duration_us.is_some());

    // The refused push: one record, the rule, the reason, the status git got.
    let refused = the(&all, "the push to main", |r| {
        git_push_of(r, "refs/heads/main")
    });
    let d = refused.decision.as_ref().unwrap();
    assert_eq!(
        (d.effect.as_str(), d.rule.as_deref()),
        ("deny", Some("protect-main"))
    );
    assert_eq!(
        refused.status,
        Some(200),
        "git reads refusals from a 200 report"
    );
    assert!(
        all.iter()
            .all(|r| r.ref_id.as_deref() != Some(refused.id.as_str()))
    );

    // Fetches were recorded as such.
    assert!(all.iter().any(|r| {
        r.action
            .as_ref()
            .is_some_and(|a| a.kind.as_deref() == Some("git_fetch"))
            && r.decision
                .as_ref()
                .is_some_and(|d| d.rule.as_deref() == Some("read-code"))
    }));

    // OTLP: the decision was on disk before the upstream saw the request.
    let seen = seen_before_forwarding.lock().unwrap().clone();
    assert_eq!(seen, [("audit-test-otlp-1".to_string(), true)]);
    let traces = the(&all, "the allowed export", |r| {
        r.kind == "request" && r.request_id.as_deref() == Some("audit-test-otlp-1")
    });
    let id = traces.identity.as_ref().unwrap();
    assert_eq!(id.client_id.as_deref(), Some(CI_CLIENT));
    let action = traces.action.as_ref().unwrap();
    assert_eq!(action.kind.as_deref(), Some("otlp_traces"));
    assert_eq!(action.services, ["checkout"]);
    assert_eq!(
        traces.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    let source = traces.source.as_ref().unwrap();
    assert!(source.addr.starts_with("127.0.0.1:") && source.trusted_proxy);
    let denied = the(&all, "the refused export", |r| {
        r.request_id.as_deref() == Some("audit-test-otlp-2")
    });
    assert_eq!(denied.status, Some(403));
    assert_eq!(denied.decision.as_ref().unwrap().effect, "deny");
    assert!(
        denied
            .decision
            .as_ref()
            .unwrap()
            .reasons
            .iter()
            .any(|r| r.contains("billing")),
        "{denied:#?}"
    );

    // No credentials, a forged credential, a malformed request.
    let anonymous = the(&all, "the anonymous API call", |r| {
        r.path.as_deref() == Some("/api/v1/user") && r.kind == "request"
    });
    assert_eq!(anonymous.status, Some(401));
    assert!(anonymous.identity.is_none());
    assert!(anonymous.decision.as_ref().unwrap().reasons[0].contains("no credentials"));
    let forged = the(&all, "the forged token", |r| r.kind == "token_rejected");
    assert_eq!(forged.status, Some(401));
    assert_eq!(forged.path.as_deref(), Some("/api/v1/user"));
    let bad = the(&all, "the malformed request", |r| {
        r.status == Some(400) && r.path.as_deref() == Some("/")
    });
    assert!(
        bad.decision.as_ref().unwrap().reasons[0].contains("more than one Host"),
        "{bad:#?}"
    );
    assert!(bad.identity.is_none() && bad.route.is_none());

    // A hostile path stays inside its field, capped and marked.
    let long = the(&all, "the hostile path", |r| {
        r.path.as_deref().is_some_and(|p| p.starts_with("/x%0a"))
    });
    assert!(long.truncated.contains(&"path".to_string()), "{long:#?}");
    assert_eq!(long.status, Some(400));
    assert!(long.path.as_ref().unwrap().len() <= 2048 + 3);

    // The exports: carol's allowed by audit-export, with its query and (in the outcome) the
    // export's own summary; alice's refused; the bad query refused with the reason.
    let carol_export = the(&all, "carol's export", |r| {
        r.kind == "admin"
            && r.identity
                .as_ref()
                .is_some_and(|i| i.username.as_deref() == Some("carol"))
            && r.detail
                .as_deref()
                .is_some_and(|d| d.contains("format=csv&route=gogs"))
    });
    let d = carol_export.decision.as_ref().unwrap();
    assert_eq!(
        (d.effect.as_str(), d.rule.as_deref()),
        ("allow", Some("audit-export"))
    );
    assert_eq!(carol_export.route.as_deref(), Some("gatehouse"));
    let done = the(&all, "carol's export outcome", |r| {
        r.ref_id.as_deref() == Some(carol_export.id.as_str())
    });
    assert_eq!(done.status, Some(200));
    assert!(
        done.detail
            .as_deref()
            .is_some_and(|d| d.contains("chain verified") && d.contains("signatures checked")),
        "{done:#?}"
    );
    assert_eq!(done.bytes_out, Some(csv.len() as u64));
    let alice_export = the(&all, "alice's export", |r| {
        r.kind == "admin"
            && r.identity
                .as_ref()
                .is_some_and(|i| i.username.as_deref() == Some("alice"))
    });
    assert_eq!(alice_export.status, Some(403));
    assert_eq!(alice_export.decision.as_ref().unwrap().effect, "deny");
    let bad_query = the(&all, "the bad export query", |r| {
        r.kind == "admin" && r.status == Some(400)
    });
    assert!(
        bad_query
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("format=xml") && d.contains("bad query")),
        "{bad_query:#?}"
    );

    // `audit export --format csv` of the whole run holds exactly the requests made above,
    // each with its identity and decision, and says the chain verified.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.args(["audit", "export"])
        .arg(&dir)
        .args([
            "--since",
            "2000-01-01",
            "--until",
            "2100-01-01",
            "--format",
            "csv",
            "--pubkey",
        ])
        .arg(gw.audit_key());
    let (ok, out, err) = run_with_timeout(&mut cmd, 60);
    assert!(ok, "{err}");
    assert!(
        err.contains("chain verified") && err.contains("signatures checked"),
        "{err}"
    );
    let rows = support::csv::parse_csv(&out);
    let col = |name: &str| rows[0].iter().position(|c| c == name).unwrap();
    let rows = &rows[1..];
    let row = |r: &[String], name: &str| r[col(name)].clone();
    // One row per decision (outcomes are merged into their request's row).
    assert_eq!(
        rows.len(),
        all.iter().filter(|r| r.kind != "outcome").count(),
        "{out}"
    );
    let mut seen: Vec<String> = rows
        .iter()
        .map(|r| {
            let who = match row(r, "username") {
                u if u.is_empty() => row(r, "client_id"),
                u => u,
            };
            let what = match row(r, "action").as_str() {
                "git_push" => format!("push {}", row(r, "refs").split(' ').next().unwrap_or("")),
                "" => format!("{} {}", row(r, "kind"), row(r, "path")),
                other => other.to_string(),
            };
            format!(
                "{who}|{what}|{}|{}|{}",
                row(r, "decision"),
                row(r, "rule"),
                row(r, "status")
            )
        })
        .collect();
    seen.sort();
    seen.dedup();
    let expected = [
        "alice|push refs/heads/feature|allow|write-code|200",
        "alice|push refs/heads/main|deny|protect-main|200",
        "ci-pipeline|otlp_traces|allow|ci-traces|200",
        "ci-pipeline|otlp_traces|deny||403",
        "|request /api/v1/user|deny||401",
        "|token_rejected /api/v1/user|deny||401",
        "|request /|deny||400",
        "carol|admin /.gatehouse/audit/export|allow|audit-export|200",
        // Allowed by the rule, refused for its bad query before anything was exported.
        "carol|admin /.gatehouse/audit/export|deny|audit-export|400",
        "alice|admin /.gatehouse/audit/export|deny||403",
    ];
    for e in expected {
        assert!(
            seen.iter().any(|s| s == e),
            "no row {e:?} in\n{}",
            seen.join("\n")
        );
    }
    // Everything else is alice's git traffic allowed by read-code (and the push
    // advertisement by write-code), the hostile path, and the gateway's start and stop.
    for s in &seen {
        let known = expected.contains(&s.as_str())
            || (s.starts_with("alice|git_") && s.ends_with("|allow|read-code|200"))
            || s == "alice|push |allow|write-code|200"
            || (s.starts_with("|request /x%0a") && s.ends_with("|deny||400"))
            || s.starts_with("|config_reload ")
            || s.starts_with("|admin ") && !s.contains("/.gatehouse/");
        assert!(known, "an unexpected row: {s}\n{}", seen.join("\n"));
    }

    // No secret reached the log.
    let text = all_text(&dir);
    for secret in [
        alice.as_str(),
        ci.as_str(),
        BROKER_TOKEN,
        LIGHTSTEP_TOKEN,
        provider.ci_secret.as_str(),
    ] {
        assert!(!text.contains(secret), "a secret is in the audit log");
    }

    // `policy diff` replays these decisions: a rule protecting feature branches would have
    // refused alice's push, and nothing else; OLD is exactly what was in force.
    let proposed = tempfile::tempdir().unwrap();
    std::fs::write(
        proposed.path().join("policy.yaml"),
        format!(
            "{POLICY}  - id: protect-features\n    route: gogs\n    effect: deny\n    roles: [\"*\"]\n    git: {{ actions: [push], refs: [\"refs/heads/feature*\"] }}\n"
        ),
    )
    .unwrap();
    let (ok, out, err) = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["policy", "diff"])
            .arg(secrets.path("policies"))
            .arg(proposed.path())
            .arg("--audit")
            .arg(&dir)
            .arg("--config")
            .arg(&gw.config)
            .arg("--fail-on-change"),
        60,
    );
    assert!(
        !ok,
        "--fail-on-change must fail when decisions change:\n{out}{err}"
    );
    assert!(
        out.contains("alice [engineering]")
            && out.contains("git push platform/app refs/heads/feature")
            && out.contains("allow (write-code) -> deny (protect-features)"),
        "{out}{err}"
    );
    assert!(
        out.contains("1 would change (1 allow -> deny, 0 deny -> allow"),
        "{out}"
    );
    assert!(!out.contains("OLD is not"), "{out}");

    // The last checkpoint was written at shutdown and covers the last record.
    let checkpoints: String = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".checkpoints"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let last: serde_json::Value =
        serde_json::from_str(checkpoints.lines().last().unwrap()).unwrap();
    assert_eq!(last["reason"], "shutdown");
    assert_eq!(last["seq"], all.len() as u64);
}

/// A small tmpfs, so the audit log can really run out of space. Unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

fn as_root(args: &[&str]) -> (bool, String) {
    let root = real_uid() == 0;
    let mut cmd = if root {
        Command::new(args[0])
    } else {
        let mut c = Command::new("sudo");
        c.arg("-n").arg(args[0]);
        c
    };
    cmd.args(&args[1..]);
    let (ok, out, err) = run_with_timeout(&mut cmd, 30);
    (ok, format!("{out}{err}"))
}

/// The real user id, from /proc (no libc dependency).
fn real_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().display().to_string();
        let (ok, out) = as_root(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0777"),
            "tmpfs",
            &path,
        ]);
        assert!(
            ok,
            "this test needs a small tmpfs (root, or passwordless sudo, to mount it): {out}"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system; returns the filler to delete later.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.dir.path().display().to_string();
        let _ = as_root(&["umount", "-l", &path]);
    }
}

fn status_of(ca: &DevCa, gw: &TestGateway, host: &str, path: &str) -> (String, String) {
    let url = format!("https://{host}:{}{path}", gw.port());
    let (_, out, err) = run_with_timeout(
        &mut curl(ca, gw.port(), &["-w", "\n%{http_code}", &url]),
        30,
    );
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), format!("{body}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_what_requires_audit_and_recovers_by_itself() {
    let ca = DevCa::new();
    let fs = Tmpfs::mount("256k");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("audit.pem");
    support::gateway::write_audit_key(&key);
    let up = RecordingUpstream::start(Reply::Ok).await;
    let mut gw = GatewayBuilder::new()
        .toml(&format!(
            "[audit]\ndir = {:?}\nreplica = \"gw\"\nsigning_key_file = {:?}\nfsync = \"always\"\n",
            fs.path().display().to_string(),
            key.display().to_string()
        ))
        .route("web", "plain", &[HOST], &up.url(), "")
        .route(
            "status",
            "plain",
            &["other.example.test"],
            &up.url(),
            "audit = \"best_effort\"",
        )
        .start(&ca);
    assert_eq!(status_of(&ca, &gw, HOST, "/before").0, "200");
    let filler = fs.fill();

    // Appends may still land in the last allocated page for a few records; then they fail.
    let mut refused = None;
    for i in 0..200 {
        let (code, body) = status_of(&ca, &gw, HOST, &format!("/full-{i}"));
        if code == "503" {
            refused = Some(body);
            break;
        }
        assert_eq!(code, "200", "{body}");
    }
    let body = refused.unwrap_or_else(|| panic!("never refused:\n{}", gw.log()));
    assert!(body.contains("audit log cannot be written"), "{body}");
    let forwarded = up.requests().len();
    for i in 0..5 {
        let (code, body) = status_of(&ca, &gw, HOST, &format!("/still-full-{i}"));
        assert_eq!(code, "503", "{body}");
    }
    assert_eq!(
        up.requests().len(),
        forwarded,
        "a request was forwarded unrecorded"
    );
    // A best-effort route keeps working; its records wait in memory.
    assert_eq!(
        status_of(&ca, &gw, "other.example.test", "/best-effort").0,
        "200"
    );
    assert_eq!(up.requests().len(), forwarded + 1);
    assert_eq!(gw.metric("gatehouse_audit_healthy"), 0.0);
    assert!(gw.metric("gatehouse_audit_refused_requests_total") >= 6.0);
    assert!(gw.metric("gatehouse_audit_write_errors_total") >= 1.0);
    assert!(
        gw.log().contains("audit log cannot be written"),
        "{}",
        gw.log()
    );

    // Room again: the gateway recovers without a restart.
    std::fs::remove_file(filler).unwrap();
    gw.eventually(10, "requests forwarded again", || {
        status_of(&ca, &gw, HOST, "/after").0 == "200"
    });
    assert_eq!(gw.metric("gatehouse_audit_healthy"), 1.0);
    assert_eq!(gw.metric("gatehouse_audit_records_lost_total"), 0.0);
    assert!(gw.log().contains("audit log writable again"));
    assert!(gw.stop(30).success(), "{}", gw.log());

    // Nothing lost: the refusals and the best-effort request are on record, and it verifies.
    let (ok, out) = verify(fs.path(), &key);
    assert!(ok, "{out}");
    let all = records(fs.path());
    let refusals: Vec<&Record> = all.iter().filter(|r| r.status == Some(503)).collect();
    assert!(refusals.len() >= 6, "{refusals:#?}");
    for r in &refusals {
        let d = r.decision.as_ref().unwrap();
        assert_eq!(d.effect, "deny");
        assert!(d.reasons[0].contains("audit log unavailable"), "{r:#?}");
        assert_eq!(r.route.as_deref(), Some("web"));
    }
    assert!(
        all.iter()
            .any(|r| r.path.as_deref() == Some("/best-effort") && r.kind == "request")
    );
    assert!(all.iter().any(|r| r.path.as_deref() == Some("/after")));
}

/// Sets or clears the immutable attribute (`chattr +i`): even root's writes through a file
/// the gateway already holds open then fail, as on storage turned read-only under it.
fn immutable(path: &Path, on: bool) {
    let (ok, out) = as_root(&[
        "chattr",
        if on { "+i" } else { "-i" },
        &path.display().to_string(),
    ]);
    assert!(ok, "this test needs chattr on an ext4-like /tmp: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_storage_turned_read_only_refuses_what_requires_audit_and_recovers() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let mut gw = GatewayBuilder::new()
        .audit("fsync = \"always\"")
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let (dir, key) = (gw.audit_dir(), gw.audit_key());
    assert_eq!(status_of(&ca, &gw, HOST, "/before").0, "200");
    let log = newest_log(&dir);
    // The open log file and the directory (no new file either) refuse writes from now on.
    immutable(&log, true);
    immutable(&dir, true);
    let forwarded = up.requests().len();
    for i in 0..5 {
        let (code, body) = status_of(&ca, &gw, HOST, &format!("/read-only-{i}"));
        assert_eq!(code, "503", "{body}");
        assert!(body.contains("audit log cannot be written"), "{body}");
    }
    assert_eq!(
        up.requests().len(),
        forwarded,
        "a request was forwarded unrecorded"
    );
    gw.eventually(5, "the audit log marked unhealthy", || {
        gw.metric("gatehouse_audit_healthy") == 0.0
    });
    assert!(gw.metric("gatehouse_audit_write_errors_total") >= 1.0);

    // Writable again: the gateway recovers without a restart.
    immutable(&dir, false);
    immutable(&log, false);
    gw.eventually(10, "requests forwarded again", || {
        status_of(&ca, &gw, HOST, "/after").0 == "200"
    });
    assert_eq!(gw.metric("gatehouse_audit_healthy"), 1.0);
    assert_eq!(gw.metric("gatehouse_audit_records_lost_total"), 0.0);
    assert!(gw.stop(30).success(), "{}", gw.log());

    // The chain is intact and the refusals are on record.
    let (ok, out) = verify(&dir, &key);
    assert!(ok, "{out}");
    let all = records(&dir);
    let refusals = all.iter().filter(|r| r.status == Some(503)).count();
    assert!(refusals >= 5, "{refusals} refusals on record");
    assert!(all.iter().any(|r| r.path.as_deref() == Some("/after")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_stream_leaves_a_log_that_verifies_and_the_chain_continues() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let mut gw = GatewayBuilder::new()
        .audit("fsync = \"never\"")
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let dir = gw.audit_dir();
    let key = gw.audit_key();

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for t in 0..8 {
        let (stop, answered, ca_file, addr) = (stop.clone(), answered.clone(), ca.ca(), gw.https);
        let port = gw.port();
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let req = format!(
                    "GET /load/{t}/{i} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
                );
                let r = support::raw::try_exchange(addr, &ca_file, HOST, req.as_bytes()).await;
                if r.is_some_and(|r| r.status() == Some(200)) {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.signal("KILL");
    gw.wait(10);
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let answered = answered.load(Ordering::Relaxed);
    assert!(answered > 20, "only {answered} requests before the kill");

    // Whatever the kernel had is a valid chain (no shutdown checkpoint: the process was killed).
    let (ok, out) = verify(&dir, &key);
    assert!(ok, "{out}");
    let before = records(&dir);
    assert!(
        before.len() >= answered,
        "{} records for {answered} answered requests",
        before.len()
    );

    // A power loss can also tear the last write: cut a record in half at the end.
    let newest = newest_log(&dir);
    let torn = r#"{"time":"2026-11-26T00:00:00.000000Z","id":"torn","seq":999999,"replica":"gw","kind":"requ"#;
    append(&newest, torn);
    let (ok, out) = verify(&dir, &key);
    assert!(ok, "{out}");
    assert!(out.contains("partial record at the end"), "{out}");

    // Restarted on the same directory, the gateway continues the chain from the last
    // complete record, in a new file.
    let mut gw2 = GatewayBuilder::new()
        .toml(&format!(
            "[audit]\ndir = {:?}\nreplica = \"gw\"\nsigning_key_file = {:?}\n",
            dir.display().to_string(),
            key.display().to_string()
        ))
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    for i in 0..3 {
        assert_eq!(
            status_of(&ca, &gw2, HOST, &format!("/after-restart/{i}")).0,
            "200"
        );
    }
    assert!(gw2.stop(30).success(), "{}", gw2.log());
    assert_ne!(
        newest_log(&dir),
        newest,
        "the restarted gateway writes a new file"
    );
    let (ok, out) = verify(&dir, &key);
    assert!(ok, "{out}");
    assert!(out.contains("partial record at the end"), "{out}");
    let after = records(&dir);
    let last_before = before.last().unwrap();
    let first_new = &after[before.len()];
    assert_eq!(first_new.seq, last_before.seq + 1);
    assert_eq!(first_new.prev, last_before.hash);
    assert!(
        after
            .iter()
            .any(|r| r.path.as_deref() == Some("/after-restart/2"))
    );
}

fn newest_log(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files.pop().expect("a log file")
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_configuration_reloads_are_recorded_with_what_is_in_force() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let policies = tempfile::tempdir().unwrap();
    let good = "rules:\n  - id: anyone\n    route: web\n    roles: [\"*\"]\n";
    std::fs::write(policies.path().join("p.yaml"), good).unwrap();
    let mut gw = GatewayBuilder::new()
        .toml(&format!(
            "[policy]\ndir = {:?}\n",
            policies.path().display().to_string()
        ))
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let dir = gw.audit_dir();
    let reloads = |dir: &Path| -> Vec<Record> {
        records(dir)
            .into_iter()
            .filter(|r| r.kind == "policy_reload" || r.kind == "config_reload")
            .collect()
    };
    gw.eventually(10, "the start record", || reloads(&dir).len() == 1);
    let start = reloads(&dir)[0].detail.clone().unwrap();
    assert!(
        start.contains("started") && start.contains("1 rules from p.yaml (sha256 "),
        "{start}"
    );

    // A broken edit is refused, and the record says which policy stays in force.
    std::fs::write(
        policies.path().join("p.yaml"),
        "rules: [ {id: x, route: nowhere",
    )
    .unwrap();
    gw.eventually(10, "the failed reload record", || reloads(&dir).len() == 2);
    let failed = reloads(&dir)[1].detail.clone().unwrap();
    assert!(
        failed.contains("policy reload failed; the policy in force stays"),
        "{failed}"
    );
    let digest = start.split("sha256 ").nth(1).unwrap().trim_end_matches(')');
    assert!(failed.contains(digest), "{failed} does not name {digest}");

    std::fs::write(
        policies.path().join("p.yaml"),
        format!("{good}  - id: second\n    route: web\n    roles: [\"*\"]\n"),
    )
    .unwrap();
    gw.eventually(10, "the reload record", || reloads(&dir).len() == 3);
    let ok = reloads(&dir)[2].detail.clone().unwrap();
    assert!(ok.contains("policy reloaded: 2 rules from p.yaml"), "{ok}");
    assert!(!ok.contains(digest));

    // A configuration that does not load is recorded too.
    let config = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        config.replace("[[routes]]", "[[routes]]\nbogus = 1"),
    )
    .unwrap();
    gw.signal("HUP");
    gw.eventually(10, "the failed config reload record", || {
        reloads(&dir).iter().any(|r| {
            r.kind == "config_reload" && r.detail.as_deref().is_some_and(|d| d.contains("failed"))
        })
    });
    assert!(gw.stop(30).success());
    let (ok, out) = verify(&dir, &gw.audit_key());
    assert!(ok, "{out}");
}

#[test]
fn check_refuses_an_audit_key_that_is_not_ed25519_and_an_unwritable_dir() {
    let ca = DevCa::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.toml");
    let text = |key: &Path, audit: &Path| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:8443\"]\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n[audit]\ndir = {:?}\nsigning_key_file = {:?}\n[[routes]]\nname = \"web\"\nkind = \"plain\"\nhosts = [\"*\"]\nupstream = \"http://127.0.0.1:3000\"\npublic = true\n",
            ca.cert().display().to_string(),
            ca.key().display().to_string(),
            audit.display().to_string(),
            key.display().to_string()
        )
    };
    let check = || {
        run_with_timeout(
            Command::new(env!("CARGO_BIN_EXE_gatehouse"))
                .arg("check")
                .arg("--config")
                .arg(&config),
            30,
        )
    };
    // The TLS key (ECDSA) is not an Ed25519 checkpoint key.
    std::fs::write(&config, text(&ca.key(), &dir.path().join("audit"))).unwrap();
    let (ok, _, err) = check();
    assert!(!ok);
    assert!(
        err.contains("audit.signing_key_file") && err.contains("not an Ed25519 private key"),
        "{err}"
    );

    let key = dir.path().join("audit.pem");
    support::gateway::write_audit_key(&key);
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    std::fs::write(&config, text(&key, &file.join("audit"))).unwrap();
    let (ok, _, err) = check();
    assert!(!ok);
    assert!(
        err.contains("audit.dir") && err.contains("is not a directory"),
        "{err}"
    );

    std::fs::write(&config, text(&key, &dir.path().join("audit"))).unwrap();
    let (ok, out, err) = check();
    assert!(ok, "{out}{err}");
    assert!(
        !dir.path().join("audit").exists(),
        "check must not create the audit directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_over_https_of_a_tampered_log_is_cut_off_never_ended_cleanly() {
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    let policy = r#"
roles:
  auditor: { groups: [security-audit] }
rules:
  - id: audit-export
    route: gatehouse
    roles: [auditor]
    methods: [GET]
    paths: ["/.gatehouse/audit/export"]
"#;
    let secrets = Secrets::new(&provider, policy);
    let up = RecordingUpstream::start(Reply::Ok).await;
    let mut gw = GatewayBuilder::new()
        .audit("fsync = \"always\"")
        .toml(&secrets.identity(&provider, "", &[support::oidc::AUDIENCE]))
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    for i in 0..20 {
        assert_eq!(status_of(&ca, &gw, HOST, &format!("/r{i}")).0, "200");
    }
    let carol = tokio::task::block_in_place(|| user_token(&provider, "carol"));
    let auth = format!("Authorization: Bearer {carol}");
    let url = gw.url("/.gatehouse/audit/export?since=2000-01-01&until=2100-01-01&format=jsonl");
    let export = || {
        let mut cmd = curl(&ca, gw.port(), &["-H", &auth, "-w", "\n%{http_code}", &url]);
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    // Untouched, it ends cleanly.
    let (code, body) = export();
    assert_eq!(code, Some(0), "{body}");
    assert!(body.ends_with("\n200"), "{body}");

    // One byte of the first record changes on disk (same length, so nothing else moves).
    let file = newest_log(&gw.audit_dir());
    let text = std::fs::read_to_string(&file).unwrap();
    let at = text.find("started").expect("the start record");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.seek(SeekFrom::Start(at as u64 + 1)).unwrap();
        f.write_all(b"T").unwrap();
    }
    let (code, body) = export();
    assert!(
        matches!(code, Some(18 | 56 | 92)),
        "curl must see a transfer cut short, got {code:?}:\n{body}"
    );
    assert!(gw.stop(30).success(), "{}", gw.log());

    let all = records(&gw.audit_dir());
    let exports: Vec<&Record> = all
        .iter()
        .filter(|r| r.kind == "admin" && r.identity.is_some())
        .collect();
    assert_eq!(exports.len(), 2, "{all:#?}");
    let outcome_of = |r: &Record| {
        the(&all, "an export outcome", |o| {
            o.ref_id.as_deref() == Some(r.id.as_str())
        })
        .clone()
    };
    let clean = outcome_of(exports[0]);
    assert!(
        clean.detail.as_deref().unwrap().contains("chain verified"),
        "{clean:#?}"
    );
    let broken = outcome_of(exports[1]);
    let detail = broken.detail.as_deref().unwrap();
    assert!(
        detail.contains("broke off") && detail.contains("chain BROKEN") && detail.contains(":1"),
        "{broken:#?}"
    );
    let (ok, out) = verify(&gw.audit_dir(), &gw.audit_key());
    assert!(!ok, "{out}");
}
