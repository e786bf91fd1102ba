//! The gateway killed with SIGKILL under load (webhook deliveries and proxied requests in
//! flight): on restart the audit log verifies (a cut-off last line is reported, not an error),
//! the webhook store opens and answers, and every delivery Gogs had been told 200 is still
//! there and reaches its receiver.

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::hmac;
use support::raw::try_exchange;
use support::{DevCa, GatewayBuilder, HOST, RecordingUpstream, Reply, run_with_timeout};

const SOURCE_SECRET: &str = "kill-test-secret";

fn sign(body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, SOURCE_SECRET.as_bytes());
    hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn delivery(n: u64) -> (String, Vec<u8>) {
    let id = format!("00000000-0000-4000-8000-{n:012}");
    let sha = format!("{n:040x}");
    let body = serde_json::to_vec_pretty(&serde_json::json!({
        "ref": "refs/heads/main", "before": "0000000000000000000000000000000000000000", "after": sha,
        "commits": [{"id": sha, "message": format!("Change {n}\n"), "url": "https://gogs.example.test/c",
            "author": {"name": "Alice", "email": "alice@example.test", "username": "alice"},
            "committer": {"name": "Alice", "email": "alice@example.test", "username": "alice"},
            "timestamp": "2026-11-26T10:00:00Z"}],
        "repository": {"id": 1, "name": "app", "full_name": "platform/app", "owner": {"username": "platform"}},
        "pusher": {"username": "alice"}, "sender": {"username": "alice"}
    }))
    .unwrap();
    (id, body)
}

fn gatehouse(args: &[&str]) -> (bool, String) {
    let (ok, out, err) =
        run_with_timeout(Command::new(env!("CARGO_BIN_EXE_gatehouse")).args(args), 60);
    (ok, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_delivery_and_the_log_verifies() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let receiver = RecordingUpstream::start(Reply::Ok).await;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    std::fs::write(dir.join("source-secret"), SOURCE_SECRET).unwrap();
    let key = dir.join("audit.pem");
    let (ok, out) = gatehouse(&["audit", "keygen", "--out", key.to_str().unwrap()]);
    assert!(ok, "{out}");
    let builder = GatewayBuilder::new()
        .toml(&format!(
            "[audit]\ndir = {audit:?}\nreplica = \"gw\"\nsigning_key_file = {key:?}\n\
             [webhooks]\nstore = {store:?}\nretry_base = \"200ms\"\nretry_max = \"1s\"\n\
             [[webhooks.sources]]\nname = \"gogs\"\nsecret_file = {secret:?}\n\
             [[webhooks.receivers]]\nname = \"ci\"\nurl = \"{receiver}/hook\"\nsecret_env = \"RECEIVER_SECRET\"\n",
            audit = dir.join("audit").display().to_string(),
            key = key.display().to_string(),
            store = dir.join("hooks.sqlite").display().to_string(),
            secret = dir.join("source-secret").display().to_string(),
            receiver = receiver.url(),
        ))
        .env("RECEIVER_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .route("web", "plain", &[HOST], &up.url(), "");
    let mut gw = builder.start(&ca);
    let addr = gw.https;
    let hp = format!("{HOST}:{}", gw.port());

    // Eight senders of deliveries and eight of proxied requests, until the kill.
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let (ca_path, host, acknowledged) = (ca.ca(), hp.clone(), acknowledged.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let (id, body) = delivery(worker * 1_000_000 + i);
                let mut req = format!(
                    "POST /.gatehouse/hooks/gogs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nX-Gogs-Event: push\r\nX-Gogs-Delivery: {id}\r\nX-Gogs-Signature: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    sign(&body),
                    body.len()
                )
                .into_bytes();
                req.extend_from_slice(&body);
                match try_exchange(addr, &ca_path, HOST, &req).await {
                    Some(r) if r.status() == Some(200) => {
                        acknowledged.lock().unwrap().insert(id);
                    }
                    Some(_) => {}
                    None => return,
                }
            }
        }));
        let (ca_path, host) = (ca.ca(), hp.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let req =
                    format!("GET /work HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
                if try_exchange(addr, &ca_path, HOST, req.as_bytes())
                    .await
                    .is_none()
                {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    gw.signal("KILL");
    let _ = gw.wait(10);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    assert!(
        acknowledged.len() >= 10,
        "too little load before the kill: {}",
        acknowledged.len()
    );

    // The log verifies as it was left (a partial last line is reported, not a failure).
    let audit = dir.join("audit");
    let (ok, out) =
        tokio::task::block_in_place(|| gatehouse(&["audit", "verify", audit.to_str().unwrap()]));
    assert!(ok, "verify after kill -9:\n{out}");
    eprintln!(
        "{} deliveries acknowledged before the kill; verify: {}",
        acknowledged.len(),
        out.lines().last().unwrap_or("")
    );

    // Restart on the same data: the store opens, and every acknowledged delivery reaches the
    // receiver.
    let mut gw2 = builder.start(&ca);
    tokio::task::block_in_place(|| {
        gw2.eventually(90, "every acknowledged delivery forwarded", || {
            let seen: HashSet<String> = receiver
                .requests()
                .iter()
                .filter_map(|r| r.header("webhook-id").map(str::to_string))
                .collect();
            acknowledged.iter().all(|id| seen.contains(id))
        })
    });
    let config = gw2.config.clone();
    let (ok, out) = tokio::task::block_in_place(|| {
        gatehouse(&[
            "webhooks",
            "list",
            "--state",
            "dead",
            "--config",
            config.to_str().unwrap(),
        ])
    });
    assert!(ok, "{out}");
    assert!(gw2.stop(30).success(), "{}", gw2.log());
    // And the chain continued across the restart and the clean stop.
    let (ok, out) = tokio::task::block_in_place(|| {
        gatehouse(&[
            "audit",
            "verify",
            audit.to_str().unwrap(),
            "--pubkey",
            &format!("{}.pub", key.display()),
        ])
    });
    assert!(ok, "verify after restart:\n{out}");
}
