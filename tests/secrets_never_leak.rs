//! Secrets never appear in logs, errors, metrics or the audit log: a full run of the gateway
//! with every kind of secret configured (provider client secret, session keys, Gogs broker
//! token, Lightstep token, webhook source and receiver secrets, trace exporter token, audit
//! and assertion signing keys) and every path exercised (sign-in start, bearer pages, a real
//! git clone and push, an OTLP export, good and forged webhook deliveries and their forward,
//! refused credentials, a reload, shutdown), with logging at `debug` for every crate; then
//! every byte the gateway wrote or answered is searched for each secret value, and for the
//! callers' own bearer tokens.

mod support;

use std::path::Path;
use std::time::Duration;

use aws_lc_rs::hmac;
use support::oidc::{CI_CLIENT, CLI_CLIENT, OidcProvider, PASSWORD};
use support::raw::exchange;
use support::secrets::{BROKER_TOKEN, LIGHTSTEP_TOKEN, SESSION_KEY, Secrets};
use support::upstream::{RecordingUpstream, Reply};
use support::{DevCa, GatewayBuilder, GitServer, HOST, git, run_with_timeout};

const POLICY: &str = r#"
roles:
  developer: { groups: [engineering] }
rules:
  - id: code
    route: gogs
    roles: [developer]
  - id: telemetry
    route: lightstep
    roles: ["*"]
"#;
const SOURCE_SECRET: &str = "source-secret-7f3a9b2c";
const RECEIVER_SECRET: &str = "receiver-secret-1d8e6f40";
const TRACES_TOKEN: &str = "traces-token-5c2b7a91";

fn sign(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The base64 body of a PEM file (the key material itself).
fn pem_body(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_errors_metrics_or_the_audit_log() {
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    let secrets = Secrets::new(&provider, POLICY);
    let repos = tempfile::tempdir().unwrap();
    let server = GitServer::start(repos.path()).await;
    server.create_repo("platform/app.git");
    let lightstep = RecordingUpstream::start(Reply::Ok).await;
    let receiver = RecordingUpstream::start(Reply::Ok).await;
    let data = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = data.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let source_file = write("source", SOURCE_SECRET);
    let receiver_file = write("receiver", RECEIVER_SECRET);
    let mut gw = GatewayBuilder::new()
        .toml(&secrets.identity(&provider, "", &[support::oidc::AUDIENCE]))
        .toml(&format!(
            "[webhooks]\nstore = {store:?}\n[[webhooks.sources]]\nname = \"gogs\"\nsecret_file = {source_file:?}\n\
             [[webhooks.receivers]]\nname = \"ci\"\nurl = \"{receiver}/hook\"\nsecret_file = {receiver_file:?}\n\
             [telemetry.traces]\nendpoint = \"{traces}/v1/traces\"\naccess_token_env = \"GATEHOUSE_TRACES_TOKEN\"\nbatch_delay = \"100ms\"\n",
            store = data.path().join("hooks.db").display().to_string(),
            receiver = receiver.url(),
            traces = lightstep.url(),
        ))
        .route_with("gogs", "gogs", &[HOST], &server.url(), &secrets.gogs_extra())
        .route_with(
            "lightstep",
            "otlp",
            &["otlp.example.test"],
            &lightstep.url(),
            &secrets.otlp_extra(),
        )
        .env("GATEHOUSE_TRACES_TOKEN", TRACES_TOKEN)
        .env("RUST_LOG", "debug")
        .start(&ca);

    let mut answers = String::new();
    let hp = format!("{HOST}:{}", gw.port());
    let alice = tokio::task::block_in_place(|| {
        let grant = provider.device_authorize(CLI_CLIENT);
        provider
            .device_complete(&grant, "alice", PASSWORD)
            .expect("login");
        provider.device_token(&grant).access_token
    });
    let ci = tokio::task::block_in_place(|| {
        provider.client_credentials_token(CI_CLIENT, &provider.ci_secret, &[])
    });

    // Pages, a sign-in start, refused and malformed credentials, the audit export.
    for req in [
        format!(
            "GET /platform/app HTTP/1.1\r\nHost: {hp}\r\nAccept: text/html\r\nAuthorization: Bearer {alice}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /platform/app HTTP/1.1\r\nHost: {hp}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /api/v1/user HTTP/1.1\r\nHost: {hp}\r\nAuthorization: Bearer {alice}x\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /api/v1/user HTTP/1.1\r\nHost: {hp}\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
            base64_encode(&format!("x:{BROKER_TOKEN}"))
        ),
        format!(
            "GET /.gatehouse/audit/export?format=jsonl HTTP/1.1\r\nHost: {hp}\r\nAuthorization: Bearer {alice}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /.gatehouse/oidc/login?return_to=/ HTTP/1.1\r\nHost: {hp}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let r = exchange(gw.https, &ca.ca(), HOST, req.as_bytes()).await;
        answers.push_str(&r.text);
    }

    // A real clone and push.
    let work = tempfile::tempdir().unwrap();
    let url = format!("https://{hp}/platform/app.git");
    let auth = format!("http.extraHeader=Authorization: Bearer {alice}");
    let sha = tokio::task::block_in_place(|| {
        let run = |cwd: &Path, args: &[&str]| {
            let mut all = vec!["-c", auth.as_str()];
            all.extend_from_slice(args);
            let (ok, out, err) = run_with_timeout(&mut git(&ca, cwd, gw.port(), &all), 60);
            assert!(ok, "git {args:?}: {out}{err}");
            out
        };
        run(work.path(), &["clone", "--quiet", &url, "app"]);
        let app = work.path().join("app");
        std::fs::write(app.join("a.txt"), "a").unwrap();
        run(&app, &["add", "a.txt"]);
        run(&app, &["commit", "--quiet", "-m", "Add a.txt"]);
        run(&app, &["push", "--quiet", "origin", "HEAD:refs/heads/main"]);
        run(&app, &["rev-parse", "HEAD"]).trim().to_string()
    });

    // An OTLP export, with the caller trying to send its own Lightstep token.
    let body = support::otlp_body(&["checkout"]);
    let mut req = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: otlp.example.test:{}\r\nAuthorization: Bearer {ci}\r\nLightstep-Access-Token: callers-own\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        gw.port(),
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    answers.push_str(
        &exchange(gw.https, &ca.ca(), "otlp.example.test", &req)
            .await
            .text,
    );

    // A genuine delivery (forwarded, re-signed) and a forged one.
    let delivery = serde_json::to_vec_pretty(&serde_json::json!({
        "ref": "refs/heads/main", "before": "0000000000000000000000000000000000000000", "after": sha,
        "commits": [{"id": sha, "message": "Add a.txt\n", "url": "https://gogs.example.test/c",
            "author": {"name": "Alice", "email": "alice@example.test", "username": "alice"},
            "committer": {"name": "Alice", "email": "alice@example.test", "username": "alice"},
            "timestamp": "2026-11-26T10:00:00Z"}],
        "repository": {"id": 1, "name": "app", "full_name": "platform/app",
            "html_url": "https://gogs.example.test/platform/app", "owner": {"username": "platform"}},
        "pusher": {"username": "gatehouse-broker"}, "sender": {"username": "gatehouse-broker"}
    }))
    .unwrap();
    for (id, sig) in [
        (
            "11111111-1111-4111-8111-111111111111",
            sign(SOURCE_SECRET, &delivery),
        ),
        (
            "22222222-2222-4222-8222-222222222222",
            sign("guess", &delivery),
        ),
    ] {
        let mut req = format!(
            "POST /.gatehouse/hooks/gogs HTTP/1.1\r\nHost: {hp}\r\nContent-Type: application/json\r\nX-Gogs-Event: push\r\nX-Gogs-Delivery: {id}\r\nX-Gogs-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            delivery.len()
        )
        .into_bytes();
        req.extend_from_slice(&delivery);
        answers.push_str(&exchange(gw.https, &ca.ca(), HOST, &req).await.text);
    }
    tokio::task::block_in_place(|| {
        gw.eventually(20, "the forward to the receiver", || {
            receiver.requests().iter().any(|r| r.target == "/hook")
        })
    });
    // The forward is signed with the receiver's secret; the secret itself is not sent.
    let forwarded = &receiver.requests()[0];
    let forwarded_text = format!("{:?}", forwarded.headers);
    assert!(
        forwarded_text.contains("webhook-signature"),
        "{forwarded_text}"
    );

    // A reload, metrics, and the gateway's own spans reaching the trace endpoint.
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = gw.metrics_text();
    tokio::task::block_in_place(|| {
        gw.eventually(20, "the gateway's spans", || {
            lightstep.requests().iter().any(|r| {
                r.target == "/v1/traces" && r.header("lightstep-access-token") == Some(TRACES_TOKEN)
            })
        })
    });
    let audit_dir = gw.audit_dir();
    let key_material = [
        pem_body(&gw.audit_key()),
        pem_body(Path::new(&secrets.path("assertion.key"))),
    ];
    assert!(gw.stop(30).success(), "{}", gw.log());
    let log = gw.log();

    let mut audit = String::new();
    for entry in std::fs::read_dir(&audit_dir).unwrap() {
        audit.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    assert!(
        audit.contains("\"kind\":\"webhook\"") && audit.contains("git_push"),
        "the run was recorded"
    );
    assert!(
        log.len() > 10_000,
        "debug logging was on: {} bytes",
        log.len()
    );

    let session_key_raw = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(SESSION_KEY)
            .unwrap()
    };
    let secret_values: Vec<(&str, String)> = vec![
        ("the provider client secret", provider.web_secret.clone()),
        ("the session key", SESSION_KEY.to_string()),
        (
            "the session key (raw)",
            String::from_utf8_lossy(&session_key_raw).into_owned(),
        ),
        ("the Gogs broker token", BROKER_TOKEN.to_string()),
        ("the Lightstep token", LIGHTSTEP_TOKEN.to_string()),
        ("the webhook source secret", SOURCE_SECRET.to_string()),
        ("the webhook receiver secret", RECEIVER_SECRET.to_string()),
        ("the trace exporter token", TRACES_TOKEN.to_string()),
        ("the audit signing key", key_material[0].clone()),
        ("the assertion signing key", key_material[1].clone()),
        ("alice's access token", alice.clone()),
        ("the CI token", ci.clone()),
        // A JWT's signature part alone is enough to replay it.
        (
            "alice's token signature",
            alice.rsplit('.').next().unwrap().to_string(),
        ),
    ];
    for (what, value) in &secret_values {
        assert!(value.len() >= 8, "{what} is too short to search for");
        for (place, text) in [
            ("the log", &log),
            ("the audit log", &audit),
            ("the metrics", &metrics),
            ("the answers", &answers),
        ] {
            assert!(!text.contains(value.as_str()), "{what} appears in {place}");
        }
    }
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
