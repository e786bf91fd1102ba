//! Webhook forgery and replay: a delivery is only as good as its signature, and a genuine one
//! sent again (by Gogs redelivering, or by someone who captured it) is processed once.

use aws_lc_rs::hmac;

use crate::harness::Stack;
use crate::support::{DevCa, GatewayBuilder, HOST, RecordingUpstream, Reply};

const SECRET: &str = "hook-secret-for-threats";

async fn stack() -> (Stack, tempfile::TempDir) {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("secret"), SECRET).unwrap();
    let gw = GatewayBuilder::new()
        .toml(&format!(
            "[webhooks]\nstore = {:?}\n[[webhooks.sources]]\nname = \"gogs\"\nsecret_file = {:?}\n",
            data.path().join("hooks.db").display().to_string(),
            data.path().join("secret").display().to_string()
        ))
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    (Stack::from_parts(ca, up, gw), data)
}

fn sign(key: &str, body: &[u8]) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    hmac::sign(&k, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn body(after: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "ref": "refs/heads/main", "before": "0000000000000000000000000000000000000000",
        "after": after, "commits": [],
        "repository": {"id": 1, "name": "app", "full_name": "platform/app"},
        "pusher": {"username": "alice"}, "sender": {"username": "alice"}
    }))
    .unwrap()
}

fn delivery(s: &Stack, id: &str, signature: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /.gatehouse/hooks/gogs HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nX-Gogs-Event: push\r\nX-Gogs-Delivery: {id}\r\nX-Gogs-Signature: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        s.host(),
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_signed_with_another_secret_is_refused() {
    let (s, _data) = stack().await;
    let b = body(&"a".repeat(40));
    let req = delivery(&s, "d-forged", &sign("guessed", &b), &b);
    s.refused(
        "forged signature",
        &req,
        401,
        "X-Gogs-Signature does not match",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_body_altered_after_signing_is_refused() {
    let (s, _data) = stack().await;
    let b = body(&"a".repeat(40));
    let sig = sign(SECRET, &b);
    let altered = body(&"b".repeat(40));
    let req = delivery(&s, "d-altered", &sig, &altered);
    s.refused("altered body", &req, 401, "X-Gogs-Signature does not match")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_replayed_under_a_new_delivery_id_is_processed_once() {
    let (s, _data) = stack().await;
    let b = body(&"c".repeat(40));
    let sig = sign(SECRET, &b);
    let first = s.send(&delivery(&s, "d-first", &sig, &b)).await;
    assert_eq!(first.status(), Some(200), "{}", first.text);
    assert!(!first.text.contains("duplicate"), "{}", first.text);
    for id in ["d-first", "d-replayed"] {
        let again = s.send(&delivery(&s, id, &sig, &b)).await;
        // Acknowledged (so Gogs stops), not processed, and said so.
        assert_eq!(again.status(), Some(200), "{}", again.text);
        let said = if id == "d-first" {
            "duplicate"
        } else {
            "already received as delivery d-first"
        };
        assert!(again.text.contains(said), "{id}: {}", again.text);
        let rid = again.header("x-request-id").unwrap();
        // The outcome record (written when the answer is sent) says what was done.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let records = tokio::task::block_in_place(|| s.records(&rid));
            if records
                .iter()
                .any(|r| r.detail.as_deref().is_some_and(|d| d.contains(said)))
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{id}: {records:#?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        s.gw.metric(r#"gatehouse_webhook_deliveries_total{result="duplicate"}"#),
        2.0
    );
    assert_eq!(
        s.gw.metric(r#"gatehouse_webhook_deliveries_total{result="accepted"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_reusing_a_delivery_id_with_another_body_is_refused() {
    let (s, _data) = stack().await;
    let b = body(&"d".repeat(40));
    let ok = s.send(&delivery(&s, "d-same", &sign(SECRET, &b), &b)).await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    let other = body(&"e".repeat(40));
    let r = s
        .send(&delivery(&s, "d-same", &sign(SECRET, &other), &other))
        .await;
    assert_eq!(r.status(), Some(409), "{}", r.text);
}
