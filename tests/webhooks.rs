//! Gogs webhooks end to end: a real push through the gateway by a person signed in with a real
//! provider, then the Gogs-shaped delivery for it (built like Gogs builds it: indented JSON,
//! the same field names), verified, recorded with the verified pusher, and forwarded to a
//! Python receiver that checks the Standard Webhooks signature with the `standardwebhooks`
//! library. Then everything a delivery can get wrong, replays, dead letters and a restart
//! with deliveries pending.

mod support;

use std::path::Path;
use std::time::Duration;

use gatehouse::audit::Record;
use support::hooks::*;
use support::oidc::{CLI_CLIENT, OidcProvider, PASSWORD};
use support::raw::exchange;
use support::secrets::Secrets;
use support::{DevCa, GatewayBuilder, GitServer, HOST, free_port, git, run_with_timeout};

const POLICY: &str = r#"
roles:
  developer: { groups: [engineering] }
rules:
  - id: read-code
    route: gogs
    roles: [developer]
    git: { actions: [fetch] }
  - id: write-code
    route: gogs
    roles: [developer]
    git: { actions: [push], repos: ["platform/*"] }
"#;

/// The `[audit]` and `[webhooks]` sections, with everything kept in `dir` so a second gateway
/// can continue where the first stopped.
fn webhooks_toml(dir: &Path, receivers: &str) -> String {
    let secret = dir.join("source-secret");
    std::fs::write(&secret, SOURCE_SECRET).unwrap();
    let receiver_secret = dir.join("receiver-secret");
    std::fs::write(&receiver_secret, RECEIVER_SECRET).unwrap();
    let key = dir.join("audit.pem");
    if !key.exists() {
        support::gateway::write_audit_key(&key);
    }
    let receivers = receivers.replace(
        "RECEIVER_SECRET_FILE",
        &format!("{:?}", receiver_secret.display().to_string()),
    );
    format!(
        "[audit]\ndir = {audit:?}\nreplica = \"gw\"\nsigning_key_file = {key:?}\n\
[webhooks]\nstore = {store:?}\nmax_body = \"64KiB\"\nretry_base = \"200ms\"\nretry_max = \"1s\"\nmax_attempts = 50\n\
[[webhooks.sources]]\nname = \"gogs\"\nsecret_file = {secret:?}\n{receivers}",
        audit = dir.join("audit").display().to_string(),
        key = key.display().to_string(),
        store = dir.join("webhooks.sqlite").display().to_string(),
        secret = secret.display().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_through_the_gateway_is_attributed_to_the_person_and_forwarded_once_signed() {
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    let secrets = Secrets::new(&provider, POLICY);
    let repos = tempfile::tempdir().unwrap();
    let server = GitServer::start(repos.path()).await;
    server.create_repo("platform/app.git");
    let data = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(data.path(), None);
    let receivers = format!(
        "[[webhooks.receivers]]\nname = \"ci\"\nurl = \"{}\"\nevents = [\"push\"]\nrepos = [\"platform/*\"]\nsecret_file = RECEIVER_SECRET_FILE\n",
        receiver.url("/flaky")
    );
    let mut gw = GatewayBuilder::new()
        .toml(&secrets.identity(&provider, "", &[support::oidc::AUDIENCE]))
        .toml(&webhooks_toml(data.path(), &receivers))
        .route_with(
            "gogs",
            "gogs",
            &[HOST],
            &server.url(),
            &secrets.gogs_extra(),
        )
        .start(&ca);

    // alice pushes a new branch through the gateway.
    let alice = tokio::task::block_in_place(|| {
        let grant = provider.device_authorize(CLI_CLIENT);
        provider
            .device_complete(&grant, "alice", PASSWORD)
            .expect("login");
        provider.device_token(&grant).access_token
    });
    let work = tempfile::tempdir().unwrap();
    let url = format!("https://{HOST}:{}/platform/app.git", gw.port());
    let auth = format!("http.extraHeader=Authorization: Bearer {alice}");
    let run = |cwd: &Path, args: &[&str]| {
        let mut all = vec!["-c", auth.as_str()];
        all.extend_from_slice(args);
        let (ok, out, err) = run_with_timeout(&mut git(&ca, cwd, gw.port(), &all), 60);
        assert!(ok, "git {args:?}: {out}{err}");
        out
    };
    tokio::task::block_in_place(|| {
        run(work.path(), &["clone", "--quiet", &url, "app"]);
        let app = work.path().join("app");
        std::fs::write(app.join("a.txt"), "a").unwrap();
        run(&app, &["add", "a.txt"]);
        run(&app, &["commit", "--quiet", "-m", "Add a.txt"]);
        run(
            &app,
            &["push", "--quiet", "origin", "HEAD:refs/heads/feature"],
        );
    });
    let sha = tokio::task::block_in_place(|| run(&work.path().join("app"), &["rev-parse", "HEAD"]))
        .trim()
        .to_string();

    // Gogs's delivery for that push.
    let body = push_payload(
        "platform/app",
        "refs/heads/feature",
        ZEROS,
        &[(sha.clone(), "Add a.txt".into())],
    );
    let delivery = "3f2a9c4e-6a1b-4e8e-9d3c-1a2b3c4d5e6f";
    let (status, text) = deliver_signed(&ca, &gw, "push", delivery, &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("1 commit(s) recorded")
            && text.contains("verified pusher alice")
            && text.contains("queued for ci"),
        "{text}"
    );

    // The receiver fails twice, then takes it: exactly one successful delivery, every
    // attempt signed the way its library checks.
    tokio::task::block_in_place(|| {
        wait_for(30, "the third attempt", || {
            receiver.requests().iter().any(|r| r["status"] == 200)
        })
    });
    // Redelivery (same id and body) and a replay (same body, new id) are acknowledged and
    // processed once.
    let (status, text) = deliver_signed(&ca, &gw, "push", delivery, &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("duplicate: delivery") && text.contains("not processed again"),
        "{text}"
    );
    let (status, text) = deliver_signed(
        &ca,
        &gw,
        "push",
        "9b1c0d2e-0000-4000-8000-000000000001",
        &body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(&format!("already received as delivery {delivery}")),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = receiver.requests();
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(
        got.iter()
            .map(|r| r["status"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [500, 500, 200]
    );
    for r in &got {
        assert_eq!(r["standard_ok"], true, "{r:#}");
        assert_eq!(r["gogs_ok"], true, "{r:#}");
        let h = &r["headers"];
        assert_eq!(h["webhook-id"], delivery);
        assert_eq!(h["x-gogs-delivery"], delivery);
        assert_eq!(h["x-gogs-event"], "push");
        assert_eq!(h["x-gatehouse-verified-pusher"], "alice");
        assert_eq!(h["x-gatehouse-verified-pusher-email"], "alice@example.test");
        use base64::Engine;
        let sent = base64::engine::general_purpose::STANDARD
            .decode(r["body"].as_str().unwrap())
            .unwrap();
        assert_eq!(sent, body, "the original bytes are forwarded");
        assert_ne!(
            h["x-gogs-signature"].as_str().unwrap(),
            sign(SOURCE_SECRET, &body),
            "the inbound signature is never passed on"
        );
    }

    // The commit store knows the commit, by prefix, with the person who pushed it.
    let (ok, out) = gatehouse(&["webhooks", "commit", &sha[..7]], &gw.config);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "commit {sha} in platform/app (refs/heads/feature)"
        )) && out.contains("title:     Add a.txt")
            && out.contains("gogs pusher: gatehouse-broker")
            && out.contains("verified pusher: alice <alice@example.test>"),
        "{out}"
    );
    assert_eq!(
        gw.metric("gatehouse_webhook_deliveries_total{result=\"accepted\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("gatehouse_webhook_deliveries_total{result=\"duplicate\"}"),
        2.0
    );
    assert_eq!(
        gw.metric("gatehouse_webhook_forward_attempts_total{receiver=\"ci\",result=\"retry\"}"),
        2.0
    );
    assert_eq!(
        gw.metric("gatehouse_webhook_forward_attempts_total{receiver=\"ci\",result=\"delivered\"}"),
        1.0
    );
    assert!(gw.stop(30).success(), "{}", gw.log());

    // Each receive and each forward attempt is on record.
    let all = records(&data.path().join("audit"));
    let received: Vec<&Record> = all
        .iter()
        .filter(|r| r.kind == "webhook" && r.path.is_some())
        .collect();
    assert_eq!(received.len(), 3, "{received:#?}");
    let first = received[0];
    let d = first.decision.as_ref().unwrap();
    assert_eq!(d.effect, "allow");
    assert_eq!(d.reasons, ["signature verified (source gogs)"]);
    let action = first.action.as_ref().unwrap();
    assert_eq!(action.kind.as_deref(), Some("webhook_push"));
    assert_eq!(action.repository.as_deref(), Some("platform/app"));
    assert_eq!(action.refs[0].new, sha);
    let outcome_of = |r: &Record| {
        all.iter()
            .find(|o| o.ref_id.as_deref() == Some(r.id.as_str()))
            .unwrap_or_else(|| panic!("no outcome for {r:#?}"))
            .clone()
    };
    let done = outcome_of(first);
    assert!(
        done.detail
            .as_deref()
            .unwrap()
            .contains("verified pusher alice")
    );
    assert_eq!(done.status, Some(200));
    assert_eq!(done.bytes_in, Some(body.len() as u64));
    assert!(
        outcome_of(received[1])
            .detail
            .unwrap()
            .contains("duplicate")
    );
    assert!(
        outcome_of(received[2])
            .detail
            .unwrap()
            .contains("duplicate")
    );
    let attempts: Vec<&Record> = all
        .iter()
        .filter(|r| {
            r.kind == "webhook"
                && r.detail
                    .as_deref()
                    .is_some_and(|d| d.starts_with(&format!("forward of delivery {delivery}")))
        })
        .collect();
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    assert_eq!(attempts[2].status, Some(200));
    assert!(
        attempts[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("the receiver answered 500; retry 2 of 50")
    );
    // And the push itself, by alice.
    assert!(all.iter().any(|r| {
        r.action
            .as_ref()
            .is_some_and(|a| a.kind.as_deref() == Some("git_push"))
            && r.identity
                .as_ref()
                .is_some_and(|i| i.username.as_deref() == Some("alice"))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_that_are_not_genuine_are_refused_and_nothing_queued_is_lost() {
    let ca = DevCa::new();
    let data = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(data.path(), None);
    let later_port = free_port();
    let receivers = format!(
        "[[webhooks.receivers]]\nname = \"strict\"\nurl = \"{}\"\nevents = [\"create\"]\nsecret_file = RECEIVER_SECRET_FILE\n\
[[webhooks.receivers]]\nname = \"later\"\nurl = \"http://127.0.0.1:{later_port}/ok\"\nevents = [\"release\"]\nsecret_file = RECEIVER_SECRET_FILE\n",
        receiver.url("/reject"),
    );
    let toml = webhooks_toml(data.path(), &receivers);
    let builder =
        GatewayBuilder::new()
            .toml(&toml)
            .route("web", "plain", &[HOST], "http://127.0.0.1:9", "");
    let mut gw = builder.start(&ca);

    // The shared test vector, exactly as Gogs signed it.
    let vector = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/gogs/push.json"
    ))
    .unwrap();
    let sig_file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/gogs/push.json.sig"
    ))
    .unwrap();
    let vector_sig = sig_file
        .lines()
        .find_map(|l| l.strip_prefix("X-Gogs-Signature: "))
        .unwrap()
        .to_string();
    let good = format!("X-Gogs-Signature: {vector_sig}");
    let json = "application/json";
    let (status, text) = deliver(
        &ca,
        &gw,
        "push",
        "11111111-1111-4111-8111-111111111111",
        json,
        std::slice::from_ref(&good),
        &vector,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("accepted push delivery"), "{text}");

    // Everything that is not exactly a genuine delivery.
    let mut tampered = vector.clone();
    let at = tampered.windows(6).position(|w| w == b"Update").unwrap();
    tampered[at] = b'u';
    let other = format!("X-Gogs-Signature: {}", sign("not-the-secret", &vector));
    let upper = format!("X-Gogs-Signature: {}", vector_sig.to_ascii_uppercase());
    let prefixed = format!("X-Gogs-Signature: sha256={vector_sig}");
    type Case<'a> = (&'a str, Vec<String>, &'a [u8], u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "tampered body",
            vec![good.clone()],
            &tampered,
            401,
            "does not match",
        ),
        ("wrong secret", vec![other], &vector, 401, "does not match"),
        ("no signature", vec![], &vector, 401, "no X-Gogs-Signature"),
        (
            "empty signature",
            vec!["X-Gogs-Signature: ".into()],
            &vector,
            401,
            "empty",
        ),
        ("upper-case hex", vec![upper], &vector, 401, "upper-case"),
        ("sha256= prefix", vec![prefixed], &vector, 401, "malformed"),
    ];
    for (what, headers, body, want, says) in cases {
        let (status, text) = deliver(
            &ca,
            &gw,
            "push",
            "22222222-2222-4222-8222-222222222222",
            json,
            &headers,
            body,
        )
        .await;
        assert_eq!(status, want, "{what}: {text}");
        assert!(text.contains(says), "{what}: {text}");
    }
    // Only POST, and the answer says so.
    let get = format!(
        "GET /.gatehouse/hooks/gogs HTTP/1.1\r\nHost: {HOST}:{}\r\nConnection: close\r\n\r\n",
        gw.port()
    );
    let r = exchange(gw.https, &ca.ca(), HOST, get.as_bytes()).await;
    assert_eq!(r.status(), Some(405), "{}", r.text);
    assert_eq!(r.header("allow").as_deref(), Some("POST"), "{}", r.text);
    // Too large: refused on the declared length, before the body is read or hashed...
    let head = format!(
        "POST /.gatehouse/hooks/gogs HTTP/1.1\r\nHost: {HOST}:{}\r\nContent-Type: {json}\r\nX-Gogs-Event: push\r\nX-Gogs-Delivery: 33333333-3333-4333-8333-333333333333\r\nX-Gogs-Signature: {vector_sig}\r\nContent-Length: {}\r\n\r\n",
        gw.port(),
        65 * 1024
    );
    let r = exchange(gw.https, &ca.ca(), HOST, head.as_bytes()).await;
    assert_eq!(r.status(), Some(413), "{}", r.text);
    // ...and when it comes chunked, without a length, as soon as it passes the cap.
    let mut chunked = format!(
        "POST /.gatehouse/hooks/gogs HTTP/1.1\r\nHost: {HOST}:{}\r\nContent-Type: {json}\r\nX-Gogs-Event: push\r\nX-Gogs-Delivery: 33333333-3333-4333-8333-333333333334\r\nX-Gogs-Signature: {vector_sig}\r\nTransfer-Encoding: chunked\r\n\r\n",
        gw.port()
    );
    for _ in 0..3 {
        chunked.push_str(&format!("6000\r\n{}\r\n", " ".repeat(0x6000)));
    }
    chunked.push_str("0\r\n\r\n");
    let r = exchange(gw.https, &ca.ca(), HOST, chunked.as_bytes()).await;
    assert_eq!(r.status(), Some(413), "{}", r.text);
    let (status, text) = deliver_signed(
        &ca,
        &gw,
        "push",
        "44444444-4444-4444-8444-444444444444",
        b"{\"ref\": ",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not JSON"), "{text}");
    let (status, _) = deliver(
        &ca,
        &gw,
        "push",
        "bad delivery id",
        json,
        std::slice::from_ref(&good),
        &vector,
    )
    .await;
    assert_eq!(status, 400);

    // A form-encoded delivery: the signature is over the JSON, not the form.
    let create = serde_json::to_vec_pretty(&serde_json::json!({
        "ref": "v1.0.0", "ref_type": "tag",
        "sha": "bffeb74224043ba2feb48d137756c8a9331c449a", "default_branch": "main",
        "repository": {"full_name": "alice/moonlanding", "html_url": "https://gogs.example.com/alice/moonlanding"},
        "sender": {"username": "alice"}
    }))
    .unwrap();
    let form: String = format!(
        "payload={}",
        create
            .iter()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' =>
                    (*b as char).to_string(),
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    let sig = format!("X-Gogs-Signature: {}", sign(SOURCE_SECRET, &create));
    let (status, text) = deliver(
        &ca,
        &gw,
        "create",
        "55555555-5555-4555-8555-555555555555",
        "application/x-www-form-urlencoded",
        &[sig],
        form.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("queued for strict"), "{text}");

    // The strict receiver answers 400: a dead letter at once, listed, and delivered after an
    // operator requeues it.
    tokio::task::block_in_place(|| {
        wait_for(15, "the dead letter", || {
            gatehouse(&["webhooks", "list", "--state", "dead"], &gw.config)
                .1
                .contains("strict")
        })
    });
    let (ok, out) = gatehouse(&["webhooks", "list", "--state", "dead"], &gw.config);
    assert!(
        ok && out.contains("the receiver answered 400; not retried"),
        "{out}"
    );
    let id = out
        .lines()
        .find(|l| l.contains("strict"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    std::fs::write(&receiver.accept, "").unwrap();
    let (ok, out) = gatehouse(&["webhooks", "retry", &id], &gw.config);
    assert!(ok, "{out}");
    tokio::task::block_in_place(|| {
        wait_for(15, "the requeued delivery", || {
            receiver
                .requests()
                .iter()
                .any(|r| r["path"] == "/reject" && r["status"] == 200)
        })
    });
    let (ok, _) = gatehouse(&["webhooks", "retry", &id], &gw.config);
    assert!(!ok, "a delivered forward is not a dead letter");

    // A release for a receiver that is not up yet: pending across a restart, then delivered.
    let release = serde_json::to_vec_pretty(&serde_json::json!({
        "action": "published",
        "release": {"id": 1, "tag_name": "v1.0.0", "target_commitish": "main", "name": "1.0",
                    "body": "", "draft": false, "prerelease": false},
        "repository": {"full_name": "alice/moonlanding"},
        "sender": {"username": "alice"}
    }))
    .unwrap();
    let (status, text) = deliver_signed(
        &ca,
        &gw,
        "release",
        "66666666-6666-4666-8666-666666666666",
        &release,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    tokio::task::block_in_place(|| {
        wait_for(15, "a failed attempt", || {
            gw.metric(
                "gatehouse_webhook_forward_attempts_total{receiver=\"later\",result=\"retry\"}",
            ) >= 1.0
        })
    });
    assert!(gw.stop(30).success(), "{}", gw.log());
    let (ok, out) = gatehouse(&["webhooks", "list", "--state", "pending"], &gw.config);
    assert!(
        ok && out.contains("later") && out.contains("cannot reach the receiver"),
        "{out}"
    );

    let later = Receiver::start(&data.path().join("later"), Some(later_port));
    let mut gw2 = builder.start(&ca);
    tokio::task::block_in_place(|| {
        // At once, unless an attempt was in flight when the first gateway stopped (then it
        // waits out its lease: the receiver's timeout + 30 s), which a loaded machine makes
        // likely.
        wait_for(60, "the pending delivery after restart", || {
            later.requests().iter().any(|r| r["status"] == 200)
        })
    });
    let got = later.requests();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["standard_ok"], true);
    assert_eq!(got[0]["headers"]["x-gogs-event"], "release");

    // The release points at the tag's commit through the earlier `create`.
    let (ok, out) = gatehouse(&["webhooks", "commit", "bffeb74"], &gw2.config);
    assert!(ok, "{out}");
    assert!(
        out.contains("tag v1.0.0") && out.contains("release v1.0.0"),
        "{out}"
    );
    assert!(gw2.stop(30).success(), "{}", gw2.log());

    // Refusals are on record with their reasons.
    let all = records(&data.path().join("audit"));
    let refused: Vec<&Record> = all
        .iter()
        .filter(|r| r.kind == "webhook" && r.status == Some(401))
        .collect();
    assert_eq!(refused.len(), 6, "{refused:#?}");
    assert!(
        refused
            .iter()
            .all(|r| r.decision.as_ref().unwrap().effect == "deny")
    );
    assert!(
        all.iter()
            .any(|r| r.kind == "webhook" && r.status == Some(413))
    );
}

#[test]
fn check_names_webhook_mistakes_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("audit.pem");
    support::gateway::write_audit_key(&key);
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[tls]\ncert_file = \"c\"\nkey_file = \"k\"\n\
[audit]\ndir = \"audit\"\nsigning_key_file = {key:?}\n\
[webhooks]\nstore = \"hooks.sqlite\"\n\
[[webhooks.sources]]\nname = \"gogs\"\nsecret = \"inline\"\n\
[[webhooks.receivers]]\nname = \"ci\"\nurl = \"ftp://x\"\nevents = [\"pushed\"]\nsecret_env = \"CI_SECRET\"\n\
[[routes]]\nname = \"web\"\nkind = \"plain\"\nhosts = [\"*\"]\nupstream = \"http://127.0.0.1:9\"\npublic = true\n",
            key = key.display().to_string()
        ),
    )
    .unwrap();
    let (ok, out) = gatehouse(&["check"], &config);
    assert!(!ok, "{out}");
    assert!(out.contains("unknown field `secret`"), "{out}");
    // With the inline secret gone, the remaining mistakes are each named by key.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("secret = \"inline\"\n", "");
    std::fs::write(&config, text).unwrap();
    let (ok, out) = gatehouse(&["check"], &config);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "webhooks.sources[0].secret_env or webhooks.sources[0].secret_file is required"
        ),
        "{out}"
    );
    assert!(
        out.contains("webhooks.receivers[0].url") && out.contains("http:// or https://"),
        "{out}"
    );
    assert!(out.contains("\"pushed\" is not a Gogs event"), "{out}");
}
