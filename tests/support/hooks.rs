//! Gogs-side helpers: the Python webhook receiver, signed Gogs-shaped deliveries, and the
//! audit records a gateway wrote.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use gatehouse::audit::Record;

use super::raw::exchange;
use super::{DevCa, HOST, TestGateway, run_with_timeout};

pub const SOURCE_SECRET: &str = "s3cr3t";
pub const RECEIVER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const ZEROS: &str = "0000000000000000000000000000000000000000";

/// The Python receiver (`tests/webhooks/receiver.py`), stopped by pid on drop.
pub struct Receiver {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    pub accept: PathBuf,
}

impl Receiver {
    pub fn start(dir: &Path, port: Option<u16>) -> Receiver {
        std::fs::create_dir_all(dir).unwrap();
        let port_file = dir.join(format!("receiver-{}.port", port.unwrap_or(0)));
        let log = dir.join("receiver.jsonl");
        let accept = dir.join("accept");
        let _ = std::fs::remove_file(&port_file);
        let mut cmd = Command::new("python3");
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/webhooks/receiver.py"
        ))
        .arg(&port_file)
        .arg(&log)
        .arg(RECEIVER_SECRET)
        .arg(&accept);
        if let Some(p) = port {
            cmd.arg(p.to_string());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 receiver");
        let deadline = Instant::now() + Duration::from_secs(15);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p.trim().parse().expect("port");
            }
            assert!(
                Instant::now() < deadline,
                "the receiver did not start (pip install standardwebhooks?)"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Receiver {
            child,
            port,
            log,
            accept,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request it got, in order.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("receiver log line"))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A delivery as Gogs sends it. `headers` are extra header lines.
pub async fn deliver(
    ca: &DevCa,
    gw: &TestGateway,
    event: &str,
    delivery: &str,
    content_type: &str,
    headers: &[String],
    body: &[u8],
) -> (u16, String) {
    let mut head = format!(
        "POST /.gatehouse/hooks/gogs HTTP/1.1\r\nHost: {HOST}:{}\r\nUser-Agent: GogsServer\r\nContent-Type: {content_type}\r\nX-Gogs-Event: {event}\r\nX-Gogs-Delivery: {delivery}\r\nX-Github-Event: {event}\r\nContent-Length: {}\r\nConnection: close\r\n",
        gw.port(),
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    let r = exchange(gw.https, &ca.ca(), HOST, &bytes).await;
    (r.status().unwrap_or(0), r.text.clone())
}

pub async fn deliver_signed(
    ca: &DevCa,
    gw: &TestGateway,
    event: &str,
    delivery: &str,
    body: &[u8],
) -> (u16, String) {
    let sig = format!("X-Gogs-Signature: {}", sign(SOURCE_SECRET, body));
    deliver(ca, gw, event, delivery, "application/json", &[sig], body).await
}

/// A push payload shaped like Gogs's (`MarshalIndent`, two spaces).
pub fn push_payload(
    repo: &str,
    git_ref: &str,
    before: &str,
    commits: &[(String, String)],
) -> Vec<u8> {
    let (owner, name) = repo.split_once('/').unwrap();
    let after = commits.last().map(|c| c.0.clone()).unwrap_or(ZEROS.into());
    let user = serde_json::json!({
        "id": 2, "login": "gatehouse-broker", "full_name": "", "email": "broker@example.test",
        "avatar_url": "https://gogs.example.test/avatars/2", "username": "gatehouse-broker"
    });
    let commits: Vec<serde_json::Value> = commits
        .iter()
        .map(|(sha, message)| {
            serde_json::json!({
                "id": sha,
                "message": format!("{message}\n"),
                "url": format!("https://gogs.example.test/{repo}/commit/{sha}"),
                "author": {"name": "Alice", "email": "alice@example.test", "username": ""},
                "committer": {"name": "Alice", "email": "alice@example.test", "username": ""},
                "added": ["a.txt"], "removed": null, "modified": null,
                "timestamp": "2026-11-26T10:00:00Z"
            })
        })
        .collect();
    let payload = serde_json::json!({
        "ref": git_ref,
        "before": before,
        "after": after,
        "compare_url": "",
        "commits": commits,
        "repository": {
            "id": 1, "owner": {"id": 1, "login": owner, "username": owner}, "name": name,
            "full_name": repo, "description": "", "private": true, "fork": false,
            "parent": null, "empty": false, "mirror": false, "size": 1024,
            "html_url": format!("https://gogs.example.test/{repo}"),
            "clone_url": format!("https://gogs.example.test/{repo}.git"),
            "default_branch": "main"
        },
        "pusher": user,
        "sender": user
    });
    serde_json::to_vec_pretty(&payload).unwrap()
}

pub fn records(dir: &Path) -> Vec<Record> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter_map(|l| serde_json::from_str::<Record>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn gatehouse(args: &[&str], config: &Path) -> (bool, String) {
    let (ok, out, err) = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(args)
            .arg("--config")
            .arg(config),
        30,
    );
    (ok, format!("{out}{err}"))
}

pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
