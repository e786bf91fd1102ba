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
                "{}traces_path = \"/traces/otlp/v0.9\"\n",
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
    assert_eq!(cases.len(), 8);

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
        assert_eq!(through.target, "/traces/otlp/v0.9", "{name}");
        assert_eq!(sent.target, "/v1/traces", "{name}");
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
        if case.encoding == "protobuf" {
            let mut expected = ExportTraceServiceRequest::decode(sent_plain.as_slice()).unwrap();
            let got = ExportTraceServiceRequest::decode(got.as_slice()).unwrap();
            // checkout (known SHA) and cart (mapped to its branch) gain exactly the commit's
            // attributes; search ("2.4.1") and ledger (unknown SHA) are left alone.
            let names: Vec<String> = expected
                .resource_spans
                .iter()
                .map(|r| {
                    r.resource
                        .as_ref()
                        .unwrap()
                        .attributes
                        .iter()
                        .find(|a| a.key == "service.name")
                        .map(|a| format!("{:?}", a.value))
                        .unwrap()
                })
                .collect();
            assert_eq!(names.len(), 4, "{name}");
            expected.resource_spans[0]
                .resource
                .as_mut()
                .unwrap()
                .attributes
                .extend(checkout.clone());
            expected.resource_spans[2]
                .resource
                .as_mut()
                .unwrap()
                .attributes
                .extend(cart.clone());
            assert_eq!(got, expected, "{name}");
        } else {
            let mut expected: serde_json::Value = serde_json::from_slice(&sent_plain).unwrap();
            let got: serde_json::Value = serde_json::from_slice(&got).unwrap();
            for (i, add) in [(0, &checkout), (2, &cart)] {
                expected["resourceSpans"][i]["resource"]["attributes"]
                    .as_array_mut()
                    .unwrap()
                    .extend(json_attributes(add));
            }
            assert_eq!(got, expected, "{name}");
        }
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
