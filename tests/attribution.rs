//! Commit attribution end to end: a signed Gogs push delivery tells the gateway about a
//! commit; the real OpenTelemetry Python SDK (`tests/otlp/attribute.py`) exports spans of
//! services built from it through the gateway, with a client-credentials token from a real
//! provider; the recording upstream standing in for Lightstep sees the resources enriched with
//! exactly the commit's attributes, everything else as the SDK sent it (compared with the same
//! export sent straight to the upstream), and the gateway's Lightstep token instead of the
//! caller's. Then what the gateway refuses, answered as OTLP clients expect.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine;
use gatehouse::classify::otlp::gunzip_capped;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use prost::Message;
use support::oidc::{CI_CLIENT, OidcProvider};
use support::python::{ok, python, run_bounded};
use support::raw::exchange;
use support::secrets::{LIGHTSTEP_TOKEN, Secrets};
use support::upstream::{Recorded, RecordingUpstream, Reply};
use support::{DevCa, GatewayBuilder, HOST, TestGateway};

const SOURCE_SECRET: &str = "gogs-hook-secret";
const CHECKOUT_SHA: &str = "4f3b9c1d2e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c";
const CART_SHA: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
const OTLP_HOST: &str = "127.0.0.1";
const POLICY: &str = "rules:\n  - id: anyone-lightstep\n    route: lightstep\n    roles: [\"*\"]\n";

fn sign(body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, SOURCE_SECRET.as_bytes());
    hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A push delivery shaped like Gogs's, of one commit.
fn push(repo: &str, branch: &str, sha: &str, title: &str, author: &str) -> Vec<u8> {
    let (owner, name) = repo.split_once('/').unwrap();
    let user = serde_json::json!({"id": 2, "login": "gatehouse-broker", "username": "gatehouse-broker", "email": "broker@example.test"});
    serde_json::to_vec_pretty(&serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "compare_url": "",
        "commits": [{
            "id": sha,
            "message": format!("{title}\n\nLonger explanation.\n"),
            "url": format!("https://gogs.example.test/{repo}/commit/{sha}"),
            "author": {"name": author, "email": format!("{}@example.test", author.to_lowercase()), "username": author.to_lowercase()},
            "committer": {"name": author, "email": format!("{}@example.test", author.to_lowercase()), "username": ""},
            "added": ["a.txt"], "removed": null, "modified": null,
            "timestamp": "2026-11-26T10:00:00Z"
        }],
        "repository": {
            "id": 1, "owner": {"id": 1, "login": owner, "username": owner}, "name": name,
            "full_name": repo, "html_url": format!("https://gogs.example.test/{repo}"),
            "clone_url": format!("https://gogs.example.test/{repo}.git"), "default_branch": "main"
        },
        "pusher": user,
        "sender": user
    }))
    .unwrap()
}

async fn deliver(ca: &DevCa, gw: &TestGateway, delivery: &str, body: &[u8]) {
    let head = format!(
        "POST /.gatehouse/hooks/gogs HTTP/1.1\r\nHost: {HOST}:{}\r\nContent-Type: application/json\r\nX-Gogs-Event: push\r\nX-Gogs-Delivery: {delivery}\r\nX-Gogs-Signature: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        gw.port(),
        sign(body),
        body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    let r = exchange(gw.https, &ca.ca(), HOST, &bytes).await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
}

struct Setup {
    ca: DevCa,
    _provider: OidcProvider,
    _secrets: Secrets,
    _store: tempfile::TempDir,
    up: RecordingUpstream,
    gw: TestGateway,
    token: String,
}

async fn setup() -> Setup {
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    let secrets = Secrets::new(&provider, POLICY);
    let store = tempfile::tempdir().unwrap();
    std::fs::write(store.path().join("source-secret"), SOURCE_SECRET).unwrap();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .toml(&secrets.identity(&provider, "", &[support::oidc::AUDIENCE]))
        .toml(&format!(
            "[webhooks]\nstore = {:?}\n[[webhooks.sources]]\nname = \"gogs\"\nsecret_file = {:?}\n\
             [attribution]\n[[attribution.services]]\nservice = \"cart\"\nrepository = \"platform/cart\"\nbranch = \"main\"\n",
            store.path().join("hooks.db").display().to_string(),
            store.path().join("source-secret").display().to_string(),
        ))
        .route_with(
            "lightstep",
            "otlp",
            &[OTLP_HOST],
            &up.url(),
            &format!(
                "{}traces_path = \"/traces/otlp/v0.9\"\nmetrics_path = \"/metrics/otlp/v0.9\"\n",
                secrets.otlp_extra()
            ),
        )
        .start(&ca);
    let token = tokio::task::block_in_place(|| {
        provider.client_credentials_token(CI_CLIENT, &provider.ci_secret, &[])
    });
    Setup {
        ca,
        _provider: provider,
        _secrets: secrets,
        _store: store,
        up,
        gw,
        token,
    }
}

/// The `sub` of a JWT (what the gateway reports as `enduser.id`).
fn subject(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["sub"].as_str().unwrap().to_string()
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// Exactly what the gateway adds for the commit `sha` of `repo`, pushed by `author`.
fn commit_attributes(
    sha: &str,
    repo: &str,
    title: &str,
    author: &str,
    enduser: &str,
) -> Vec<KeyValue> {
    let (owner, name) = repo.split_once('/').unwrap();
    let lower = author.to_lowercase();
    vec![
        kv("vcs.ref.head.revision", sha),
        kv("vcs.ref.head.name", "main"),
        kv("vcs.ref.head.type", "branch"),
        kv(
            "vcs.repository.url.full",
            &format!("https://gogs.example.test/{repo}"),
        ),
        kv("vcs.repository.name", name),
        kv("vcs.owner.name", owner),
        kv("vcs.provider.name", "gogs"),
        kv("gatehouse.commit.author.name", author),
        kv(
            "gatehouse.commit.author.email",
            &format!("{lower}@example.test"),
        ),
        kv("gatehouse.commit.title", title),
        kv("gatehouse.commit.time", "2026-11-26T10:00:00Z"),
        kv(
            "gatehouse.commit.url",
            &format!("https://gogs.example.test/{repo}/commit/{sha}"),
        ),
        kv("gatehouse.push.pusher", "gatehouse-broker"),
        kv("enduser.id", enduser),
    ]
}

/// Decodes what was sent and what arrived as `M`, adds `additions` to the sent resources
/// (index, attributes), and asserts they are equal.
fn check_protobuf<M: Message + Default + PartialEq + std::fmt::Debug>(
    name: &str,
    sent: &[u8],
    got: &[u8],
    attributes: impl Fn(&mut M, usize) -> &mut Vec<KeyValue>,
    additions: &[(usize, &Vec<KeyValue>)],
) {
    let mut expected = M::decode(sent).unwrap();
    let got = M::decode(got).unwrap();
    for (i, add) in additions {
        attributes(&mut expected, *i).extend((*add).clone());
    }
    assert_eq!(got, expected, "{name}");
}

fn plain_body(r: &Recorded) -> Vec<u8> {
    if r.header("content-encoding") == Some("gzip") {
        gunzip_capped(&r.body, 64 << 20).unwrap()
    } else {
        r.body.clone()
    }
}

fn json_attributes(kvs: &[KeyValue]) -> Vec<serde_json::Value> {
    kvs.iter()
        .map(|kv| match &kv.value.as_ref().unwrap().value {
            Some(Value::StringValue(s)) => {
                serde_json::json!({"key": kv.key, "value": {"stringValue": s}})
            }
            other => panic!("{other:?}"),
        })
        .collect()
}

#[derive(Debug, serde::Deserialize)]
struct Case {
    case: String,
    signal: String,
    encoding: String,
    gzip: bool,
    kind: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sdk_exports_are_attributed_to_the_pushed_commits() {
    let s = setup().await;
    deliver(
        &s.ca,
        &s.gw,
        "d-checkout",
        &push(
            "platform/checkout",
            "main",
            CHECKOUT_SHA,
            "Cache prices per region",
            "Alice",
        ),
    )
    .await;
    deliver(
        &s.ca,
        &s.gw,
        "d-cart",
        &push("platform/cart", "main", CART_SHA, "Fix rounding", "Bob"),
    )
    .await;

    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp/attribute.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg(format!("https://{OTLP_HOST}:{}", s.gw.port()))
        .arg(&s.token)
        .arg(s.ca.ca())
        .arg(s.up.url())
        .arg(&CHECKOUT_SHA[..9]);
    s.ca.apply_env(&mut cmd);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    for k in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("NO_PROXY", "*");
    let out = tokio::task::spawn_blocking(move || {
        ok(run_bounded(cmd, Duration::from_secs(180)), "attribute.py")
    })
    .await
    .unwrap();
    let cases: Vec<Case> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cases.len(), 16);

    let enduser = subject(&s.token);
    let checkout = commit_attributes(
        CHECKOUT_SHA,
        "platform/checkout",
        "Cache prices per region",
        "Alice",
        &enduser,
    );
    let cart = commit_attributes(CART_SHA, "platform/cart", "Fix rounding", "Bob", &enduser);
    let requests = s.up.requests();
    for case in &cases {
        let of_case = |direct: bool| -> &Recorded {
            let mut found = requests.iter().filter(|r| {
                r.header("x-otlp-case") == Some(case.case.as_str())
                    && r.header("x-direct").is_some() == direct
            });
            let r = found
                .next()
                .unwrap_or_else(|| panic!("{} not recorded", case.case));
            assert!(found.next().is_none(), "{} recorded twice", case.case);
            r
        };
        let (through, sent) = (of_case(false), of_case(true));
        let name = &case.case;

        // The gateway's token, never the caller's; Lightstep's path.
        let (upstream_path, client_path) = match case.signal.as_str() {
            "traces" => ("/traces/otlp/v0.9", "/v1/traces"),
            "metrics" => ("/metrics/otlp/v0.9", "/v1/metrics"),
            _ => ("/v1/logs", "/v1/logs"),
        };
        assert_eq!(through.target, upstream_path, "{name}");
        assert_eq!(sent.target, client_path, "{name}");
        assert_eq!(
            through.header("lightstep-access-token"),
            Some(LIGHTSTEP_TOKEN),
            "{name}"
        );
        assert_eq!(through.header_count("lightstep-access-token"), 1, "{name}");
        assert!(through.header("authorization").is_none(), "{name}");
        assert!(
            !String::from_utf8_lossy(&through.body).contains(&s.token),
            "{name}"
        );
        // Gzip in, gzip out.
        assert_eq!(
            through.header("content-encoding") == Some("gzip"),
            case.gzip,
            "{name}"
        );
        assert_eq!(
            through
                .header("content-length")
                .map(|l| l.parse::<usize>().unwrap()),
            Some(through.body.len()),
            "{name}"
        );

        let (got, sent_plain) = (plain_body(through), plain_body(sent));
        if case.kind == "unknown" {
            assert_eq!(
                got, sent_plain,
                "{name}: a body with nothing to attribute must pass byte for byte"
            );
            if !case.gzip {
                assert_eq!(through.body, sent.body, "{name}");
            }
            continue;
        }
        // checkout (known SHA) and cart (mapped to its branch) gain exactly the commit's
        // attributes; search ("2.4.1") and ledger (unknown SHA) are left alone.
        let additions = [(0, &checkout), (2, &cart)];
        if case.encoding == "protobuf" {
            match case.signal.as_str() {
                "traces" => check_protobuf::<ExportTraceServiceRequest>(
                    name,
                    &sent_plain,
                    &got,
                    |m, i| &mut m.resource_spans[i].resource.as_mut().unwrap().attributes,
                    &additions,
                ),
                "metrics" => check_protobuf::<ExportMetricsServiceRequest>(
                    name,
                    &sent_plain,
                    &got,
                    |m, i| &mut m.resource_metrics[i].resource.as_mut().unwrap().attributes,
                    &additions,
                ),
                "logs" => check_protobuf::<ExportLogsServiceRequest>(
                    name,
                    &sent_plain,
                    &got,
                    |m, i| &mut m.resource_logs[i].resource.as_mut().unwrap().attributes,
                    &additions,
                ),
                other => panic!("{other}"),
            }
        } else {
            let key = match case.signal.as_str() {
                "traces" => "resourceSpans",
                "metrics" => "resourceMetrics",
                _ => "resourceLogs",
            };
            let mut expected: serde_json::Value = serde_json::from_slice(&sent_plain).unwrap();
            let got: serde_json::Value = serde_json::from_slice(&got).unwrap();
            assert_eq!(expected[key].as_array().map(Vec::len), Some(4), "{name}");
            for (i, add) in additions {
                expected[key][i]["resource"]["attributes"]
                    .as_array_mut()
                    .unwrap()
                    .extend(json_attributes(add));
            }
            assert_eq!(got, expected, "{name}");
        }
    }

    // Counted, and on record: the request records of attributed exports name the commits.
    assert_eq!(
        s.gw.metric("gatehouse_otlp_exports_total{result=\"attributed\"}"),
        12.0
    );
    assert_eq!(
        s.gw.metric("gatehouse_otlp_exports_total{result=\"unattributed\"}"),
        4.0
    );
    assert_eq!(
        s.gw.metric("gatehouse_otlp_attributed_resources_total"),
        24.0
    );
    let mut notes = Vec::new();
    for entry in std::fs::read_dir(s.gw.audit_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let r: gatehouse::audit::Record = serde_json::from_str(line).unwrap();
                if let Some(d) = r.detail.filter(|d| d.contains("attributed to")) {
                    notes.push(d);
                }
            }
        }
    }
    assert_eq!(notes.len(), 12, "{notes:?}");

    // A client may name the commit it runs: believed only when the store knows it; the
    // gateway's own headers and baggage entries cannot be forged.
    for (named, expect_commit) in [(&CHECKOUT_SHA[..10], true), ("0123456789", false)] {
        let body = support::otlp_body(&["ledger"]);
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nHost: {OTLP_HOST}:{}\r\nAuthorization: Bearer {}\r\nContent-Type: application/x-protobuf\r\nX-Commit-Sha: {named}\r\nX-Gatehouse-Commit: forged\r\nX-Gatehouse-User: mallory\r\nbaggage: gatehouse.commit=forged,team=ledger\r\nx-otlp-case: named-{named}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            s.gw.port(),
            s.token,
            body.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        let r = exchange(s.gw.https, &s.ca.ca(), OTLP_HOST, &bytes).await;
        assert_eq!(r.status(), Some(200), "{}", r.text);
        let seen =
            s.up.requests()
                .into_iter()
                .find(|r| r.header("x-otlp-case") == Some(&format!("named-{named}")))
                .unwrap();
        assert_eq!(seen.header_count("x-gatehouse-user"), 1);
        assert_eq!(seen.header("x-gatehouse-user"), Some(enduser.as_str()));
        let baggage = seen.header("baggage").unwrap();
        assert!(
            !baggage.contains("forged") && baggage.contains("team=ledger"),
            "{baggage}"
        );
        if expect_commit {
            assert_eq!(seen.header("x-gatehouse-commit"), Some(CHECKOUT_SHA));
            assert_eq!(seen.header("x-gatehouse-commit-author"), Some("alice"));
            assert_eq!(
                seen.header("x-gatehouse-repository"),
                Some("platform/checkout")
            );
            assert!(
                baggage.contains(&format!("gatehouse.commit={CHECKOUT_SHA}")),
                "{baggage}"
            );
        } else {
            assert_eq!(seen.header("x-gatehouse-commit"), None);
            assert_eq!(seen.header("x-gatehouse-commit-author"), None);
        }
        // A W3C trace context the gateway started.
        let tp = seen.header("traceparent").unwrap();
        assert_eq!(tp.len(), 55, "{tp}");
    }
    for n in &notes {
        assert_eq!(
            n,
            &format!(
                "2 resource(s) attributed to {CHECKOUT_SHA} (platform/checkout), {CART_SHA} (platform/cart)"
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_exports_are_refused_with_an_rpc_status_and_not_forwarded() {
    let s = setup().await;
    for (content_type, body, json) in [
        ("application/x-protobuf", &b"\x0a\x05\x0a"[..], false),
        ("application/json", &b"{\"resourceSpans\":[1]}"[..], true),
        ("application/json", &b"{\"resourceSpans\":["[..], true),
    ] {
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nHost: {OTLP_HOST}:{}\r\nAuthorization: Bearer {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            s.gw.port(),
            s.token,
            body.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        let r = exchange(s.gw.https, &s.ca.ca(), OTLP_HOST, &bytes).await;
        assert_eq!(r.status(), Some(400), "{}", r.text);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some(if json {
                "application/json"
            } else {
                "application/x-protobuf"
            })
        );
        let payload = r.text.split_once("\r\n\r\n").unwrap().1.as_bytes();
        if json {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(v["code"], 3, "{v}");
            assert!(
                v["message"].as_str().unwrap().contains("cannot be read"),
                "{v}"
            );
        } else {
            // google.rpc.Status { code = 3 (INVALID_ARGUMENT), message }
            assert_eq!(&payload[..2], &[0x08, 3]);
            assert_eq!(payload[2], 0x12);
            let message = String::from_utf8_lossy(&payload[4..]);
            assert!(message.contains("protobuf"), "{message}");
        }
    }
    // Unauthenticated: 401 with the same body shape, and the Bearer challenge.
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {OTLP_HOST}:{}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
        s.gw.port()
    );
    let r = exchange(s.gw.https, &s.ca.ca(), OTLP_HOST, head.as_bytes()).await;
    assert_eq!(r.status(), Some(401));
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let v: serde_json::Value =
        serde_json::from_slice(r.text.split_once("\r\n\r\n").unwrap().1.as_bytes()).unwrap();
    assert_eq!(v["code"], 16, "{v}");
    assert!(s.up.requests().is_empty(), "nothing may reach Lightstep");
}

const GIT_POLICY: &str = r#"
roles:
  developer: { groups: [engineering] }
rules:
  - id: write-code
    route: gogs
    roles: [developer]
    git: { actions: [fetch, push], repos: ["platform/*"] }
"#;

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match &a.value.as_ref()?.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

fn array_attr(attrs: &[KeyValue], key: &str) -> Vec<String> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match &a.value.as_ref()?.value {
            Some(Value::ArrayValue(v)) => Some(
                v.values
                    .iter()
                    .filter_map(|x| match &x.value {
                        Some(Value::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_push_is_traced_with_its_verified_pusher_and_marks_the_deployment() {
    use support::git_server::GitServer;
    use support::oidc::{CLI_CLIENT, PASSWORD};
    use support::{git, run_with_timeout};

    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    let secrets = Secrets::new(&provider, GIT_POLICY);
    let repos = tempfile::tempdir().unwrap();
    let server = GitServer::start(repos.path()).await;
    server.create_repo("platform/app.git");
    let store = tempfile::tempdir().unwrap();
    std::fs::write(store.path().join("source-secret"), SOURCE_SECRET).unwrap();
    let spans = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .toml(&secrets.identity(&provider, "", &[support::oidc::AUDIENCE]))
        .toml(&format!(
            "[webhooks]\nstore = {:?}\n[[webhooks.sources]]\nname = \"gogs\"\nsecret_file = {:?}\n\
             [attribution]\n[[attribution.services]]\nservice = \"app\"\nrepository = \"platform/app\"\nbranch = \"main\"\nenvironment = \"production\"\n\
             [telemetry.traces]\nendpoint = \"{}/v1/traces\"\naccess_token_file = {:?}\nbatch_delay = \"100ms\"\n",
            store.path().join("hooks.db").display().to_string(),
            store.path().join("source-secret").display().to_string(),
            spans.url(),
            secrets.path("lightstep-token"),
        ))
        .route_with("gogs", "gogs", &[HOST], &server.url(), &secrets.gogs_extra())
        .start(&ca);

    // alice pushes to main through the gateway, inside a trace her tooling started.
    let alice = tokio::task::block_in_place(|| {
        let grant = provider.device_authorize(CLI_CLIENT);
        provider
            .device_complete(&grant, "alice", PASSWORD)
            .expect("login");
        provider.device_token(&grant).access_token
    });
    let (trace_id, parent) = ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174");
    let auth = format!("http.extraHeader=Authorization: Bearer {alice}");
    let traceparent = format!("http.extraHeader=traceparent: 00-{trace_id}-{parent}-01");
    let baggage = "http.extraHeader=baggage: gatehouse.user=mallory,team=payments".to_string();
    let work = tempfile::tempdir().unwrap();
    let url = format!("https://{HOST}:{}/platform/app.git", gw.port());
    let run = |cwd: &Path, args: &[&str]| {
        let mut all = vec![
            "-c",
            auth.as_str(),
            "-c",
            traceparent.as_str(),
            "-c",
            baggage.as_str(),
        ];
        all.extend_from_slice(args);
        let (ok, out, err) = run_with_timeout(&mut git(&ca, cwd, gw.port(), &all), 60);
        assert!(ok, "git {args:?}: {out}{err}");
        out
    };
    let sha = tokio::task::block_in_place(|| {
        run(work.path(), &["clone", "--quiet", &url, "app"]);
        let app = work.path().join("app");
        std::fs::write(app.join("a.txt"), "a").unwrap();
        run(&app, &["add", "a.txt"]);
        run(&app, &["commit", "--quiet", "-m", "Add a.txt"]);
        run(&app, &["push", "--quiet", "origin", "HEAD:refs/heads/main"]);
        run(&app, &["rev-parse", "HEAD"]).trim().to_string()
    });

    // Gogs saw the push with the gateway's span as parent, who pushed and which commit.
    let (_, push_headers) = server
        .requests()
        .into_iter()
        .find(|(target, _)| target.contains("git-receive-pack") && !target.contains("info/refs"))
        .expect("the push reached the git server");
    let tp = push_headers["traceparent"].to_str().unwrap().to_string();
    assert!(
        tp.starts_with(&format!("00-{trace_id}-")) && tp.ends_with("-01"),
        "{tp}"
    );
    let gateway_span = tp[36..52].to_string();
    assert_ne!(gateway_span, parent);
    assert_eq!(push_headers["x-gatehouse-user"], "alice");
    assert_eq!(push_headers["x-gatehouse-commit"], sha.as_str());
    assert_eq!(push_headers["x-gatehouse-repository"], "platform/app");
    let sent_baggage = push_headers["baggage"].to_str().unwrap();
    assert!(
        sent_baggage.contains("team=payments") && sent_baggage.contains("gatehouse.user=alice"),
        "{sent_baggage}"
    );
    assert!(!sent_baggage.contains("mallory"), "{sent_baggage}");

    // Gogs's delivery for it marks the deployment of every service built from main.
    deliver(
        &ca,
        &gw,
        "d-app-1",
        &push("platform/app", "main", &sha, "Add a.txt", "Alice"),
    )
    .await;

    let decoded = || -> Vec<ExportTraceServiceRequest> {
        spans
            .requests()
            .iter()
            .map(|r| ExportTraceServiceRequest::decode(r.body.as_slice()).unwrap())
            .collect()
    };
    let mut found = None;
    for _ in 0..100 {
        let all = decoded();
        let push_span = all
            .iter()
            .flat_map(|e| &e.resource_spans)
            .flat_map(|rs| {
                rs.scope_spans
                    .iter()
                    .flat_map(move |ss| ss.spans.iter().map(move |s| (rs, s)))
            })
            .find(|(_, s)| {
                // The pack upload, not the ref advertisement before it.
                string_attr(&s.attributes, "gatehouse.action").as_deref() == Some("git_push")
                    && !array_attr(&s.attributes, "gatehouse.git.ref_updates").is_empty()
            })
            .map(|(r, s)| (r.clone(), s.clone()));
        let marker = all
            .iter()
            .flat_map(|e| &e.resource_spans)
            .find(|rs| {
                rs.resource.as_ref().is_some_and(|r| {
                    string_attr(&r.attributes, "service.name").as_deref() == Some("app")
                })
            })
            .cloned();
        if let (Some(p), Some(m)) = (push_span, marker) {
            found = Some((p, m));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ((gateway_resource, span), marker) =
        found.expect("the push span and the deployment marker were exported");
    for r in spans.requests() {
        assert_eq!(r.target, "/v1/traces");
        assert_eq!(r.header("lightstep-access-token"), Some(LIGHTSTEP_TOKEN));
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    }
    let res = &gateway_resource.resource.as_ref().unwrap().attributes;
    assert_eq!(
        string_attr(res, "service.name").as_deref(),
        Some("gatehouse")
    );
    // The gateway's span continues alice's trace and is the parent Gogs was given.
    assert_eq!(hex(&span.trace_id), trace_id);
    assert_eq!(hex(&span.parent_span_id), parent);
    assert_eq!(hex(&span.span_id), gateway_span);
    assert_eq!(span.kind, 2, "server span");
    let a = &span.attributes;
    assert_eq!(
        string_attr(a, "vcs.repository.name").as_deref(),
        Some("platform/app")
    );
    assert_eq!(
        string_attr(a, "gatehouse.push.verified_pusher").as_deref(),
        Some("alice")
    );
    assert_eq!(string_attr(a, "enduser.id").as_deref(), Some("alice"));
    assert_eq!(
        string_attr(a, "gatehouse.decision").as_deref(),
        Some("allow")
    );
    assert_eq!(
        string_attr(a, "gatehouse.rule").as_deref(),
        Some("write-code")
    );
    assert_eq!(
        string_attr(a, "vcs.ref.head.revision").as_deref(),
        Some(sha.as_str())
    );
    assert_eq!(
        array_attr(a, "gatehouse.git.ref_updates"),
        [format!(
            "create refs/heads/main 0000000000000000000000000000000000000000..{sha}"
        )]
    );
    assert!(a.iter().any(|k| k.key == "http.response.status_code"));

    let m = &marker.resource.as_ref().unwrap().attributes;
    assert_eq!(
        string_attr(m, "service.version").as_deref(),
        Some(sha.as_str())
    );
    assert_eq!(
        string_attr(m, "deployment.environment.name").as_deref(),
        Some("production")
    );
    let mspan = &marker.scope_spans[0].spans[0];
    assert_eq!(mspan.name, "deploy app");
    assert_eq!(
        string_attr(&mspan.attributes, "gatehouse.push.verified_pusher").as_deref(),
        Some("alice")
    );
    assert_eq!(
        string_attr(&mspan.attributes, "vcs.ref.head.name").as_deref(),
        Some("main")
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_grpc_passes_through_with_the_callers_token_swapped() {
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    let secrets = Secrets::new(&provider, POLICY);
    let receiver_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = GatewayBuilder::new()
        .toml(&secrets.identity(&provider, "", &[support::oidc::AUDIENCE]))
        .route_with(
            "lightstep",
            "otlp",
            &[OTLP_HOST],
            &format!("http://127.0.0.1:{receiver_port}"),
            &format!("upstream_protocol = \"http2\"\n{}", secrets.otlp_extra()),
        )
        .start(&ca);
    let token = tokio::task::block_in_place(|| {
        provider.client_credentials_token(CI_CLIENT, &provider.ci_secret, &[])
    });
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp/grpc_export.py"))
        .arg(receiver_port.to_string())
        .arg(format!("{OTLP_HOST}:{}", gw.port()))
        .arg(&token)
        .arg(ca.ca());
    ca.apply_env(&mut cmd);
    for k in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "grpc_proxy",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("NO_PROXY", "*").env("no_grpc_proxy", "*");
    let out = tokio::task::spawn_blocking(move || {
        ok(run_bounded(cmd, Duration::from_secs(120)), "grpc_export.py")
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["with_token"], "SUCCESS", "{v}\n{}", gw.log());
    assert_eq!(v["without_token"], "FAILURE", "{v}");
    // Exactly one export arrived: the authenticated one, with its span, carrying the
    // gateway's Lightstep token and not the caller's credentials.
    let received = v["received"].as_array().unwrap();
    assert_eq!(received.len(), 1, "{v}");
    assert_eq!(received[0]["services"], serde_json::json!(["checkout"]));
    assert_eq!(received[0]["spans"], 1);
    let metadata: Vec<(String, String)> = received[0]["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            (
                kv[0].as_str().unwrap().to_string(),
                kv[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let values = |key: &str| -> Vec<&str> {
        metadata
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(
        values("lightstep-access-token"),
        [LIGHTSTEP_TOKEN],
        "{metadata:?}"
    );
    assert!(values("authorization").is_empty(), "{metadata:?}");
    assert_eq!(values("traceparent").len(), 1, "{metadata:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lightsteps_throttling_reaches_the_sdk_unchanged() {
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    let secrets = Secrets::new(&provider, POLICY);
    for (status, retry_after) in [(429, "7"), (503, "30"), (502, ""), (504, "")] {
        let reply = if retry_after.is_empty() {
            Reply::Status(status)
        } else {
            Reply::StatusWith(status, "retry-after", retry_after)
        };
        let up = RecordingUpstream::start(reply).await;
        let gw = GatewayBuilder::new()
            .toml(&secrets.identity(&provider, "", &[support::oidc::AUDIENCE]))
            .route_with(
                "lightstep",
                "otlp",
                &[OTLP_HOST],
                &up.url(),
                &secrets.otlp_extra(),
            )
            .start(&ca);
        let token = tokio::task::block_in_place(|| {
            provider.client_credentials_token(CI_CLIENT, &provider.ci_secret, &[])
        });
        let body = support::otlp_body(&["checkout"]);
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nHost: {OTLP_HOST}:{}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            gw.port(),
            body.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        let r = exchange(gw.https, &ca.ca(), OTLP_HOST, &bytes).await;
        assert_eq!(r.status(), Some(status), "{}", r.text);
        if retry_after.is_empty() {
            assert_eq!(r.header("retry-after"), None);
        } else {
            assert_eq!(r.header("retry-after").as_deref(), Some(retry_after));
        }
        // The upstream's own answer, not one the gateway made up.
        assert!(r.text.ends_with(&format!("status {status}")), "{}", r.text);
        assert_eq!(up.requests().len(), 1);
    }
}
