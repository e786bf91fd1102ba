//! Two gateway processes sharing a real Redis (TLS, an ACL user, append-only file fsynced on
//! every write), as replicas behind a load balancer would: a session signed in through one
//! works on the other and signed out through either is refused by both; a webhook delivered
//! to each is processed once; a forward in flight on a replica that is killed is delivered by
//! the other; Redis killed and restarted loses nothing it acknowledged, webhook intake answers
//! 503 while it is down and requests that need no Redis keep being served; and the two audit
//! chains verify and export as one.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::hooks::*;
use support::oidc::{AUDIENCE, OidcProvider, PASSWORD};
use support::raw::exchange;
use support::redis::RedisServer;
use support::secrets::{ALLOW_ALL, Secrets};
use support::{DevCa, GatewayBuilder, HOST, RecordingUpstream, Reply, TestGateway};

const PUBLIC_HOST: &str = "other.example.test";

/// `[audit]` for replica `name` (its own directory under `data`), `[webhooks]` without a store
/// (it is in Redis) and `[redis]`.
fn shared_toml(data: &Path, name: &str, redis: &str, receivers: &str) -> String {
    let secret = data.join("source-secret");
    std::fs::write(&secret, SOURCE_SECRET).unwrap();
    let receiver_secret = data.join("receiver-secret");
    std::fs::write(&receiver_secret, RECEIVER_SECRET).unwrap();
    let key = data.join("audit.pem");
    if !key.exists() {
        support::gateway::write_audit_key(&key);
    }
    format!(
        "[audit]\ndir = {audit:?}\nreplica = {name:?}\nsigning_key_file = {key:?}\n\
[webhooks]\nretry_base = \"200ms\"\nretry_max = \"1s\"\nmax_attempts = 50\n\
[[webhooks.sources]]\nname = \"gogs\"\nsecret_file = {secret:?}\n{receivers}{redis}",
        audit = data.join(format!("audit-{name}")).display().to_string(),
        key = key.display().to_string(),
        secret = secret.display().to_string(),
        receivers = receivers.replace(
            "RECEIVER_SECRET_FILE",
            &format!("{:?}", receiver_secret.display().to_string())
        ),
        redis = redis,
    )
}

async fn get(gw: &TestGateway, ca: &DevCa, host: &str, path: &str, cookies: &str) -> (u16, String) {
    let cookie = if cookies.is_empty() {
        String::new()
    } else {
        format!("Cookie: {cookies}\r\n")
    };
    let r = exchange(
        gw.https,
        &ca.ca(),
        host,
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{}\r\nAccept: text/html\r\n{cookie}Connection: close\r\n\r\n",
            gw.port()
        )
        .as_bytes(),
    )
    .await;
    (r.status().unwrap_or(0), r.text.clone())
}

async fn sign_out(gw: &TestGateway, ca: &DevCa, cookies: &str) -> (u16, String) {
    let (status, page) = get(gw, ca, HOST, "/.gatehouse/logout", cookies).await;
    assert_eq!(status, 200, "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("no CSRF token in the sign-out page")
        .to_string();
    let body = format!("csrf={csrf}");
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!(
            "POST /.gatehouse/logout HTTP/1.1\r\nHost: {HOST}:{}\r\nCookie: {cookies}\r\nOrigin: https://{HOST}:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            gw.port(),
            gw.port(),
            body.len()
        )
        .as_bytes(),
    )
    .await;
    (r.status().unwrap_or(0), r.text.clone())
}

fn sha(n: u32) -> String {
    format!("{n:08x}{}", "c0ffee".repeat(6))
        .chars()
        .take(40)
        .collect()
}

/// Every command the gateway sent was one the documented ACL allows.
fn assert_no_permission_errors(gw: &TestGateway) {
    let log = gw.log();
    assert!(!log.contains("NOPERM"), "refused by Redis's ACL:\n{log}");
}

fn audit_cli(args: &[&str]) -> (bool, String) {
    let (ok, out, err) = support::run_with_timeout(
        std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse")).args(args),
        60,
    );
    (ok, format!("{out}{err}"))
}

/// Whether `gatehouse webhooks commit` finds `sha` (and what it printed).
fn commit_known(config: &Path, sha: &str) -> (bool, String) {
    let (ok, out) = gatehouse(&["webhooks", "commit", sha], config);
    (ok && out.contains(sha), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_sessions_deliveries_and_the_outbox_through_redis() {
    let ca = DevCa::new();
    let mut redis = tokio::task::block_in_place(|| RedisServer::start(&ca));
    let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    let secrets = Secrets::new(&provider, ALLOW_ALL);
    let up = RecordingUpstream::start(Reply::Ok).await;
    let data = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(data.path(), None);
    let receivers = format!(
        "[[webhooks.receivers]]\nname = \"ci\"\nurl = \"{}\"\nrepos = [\"platform/*\"]\nsecret_file = RECEIVER_SECRET_FILE\ntimeout = \"2s\"\n\
[[webhooks.receivers]]\nname = \"slow\"\nurl = \"{}\"\nrepos = [\"slow/*\"]\nsecret_file = RECEIVER_SECRET_FILE\ntimeout = \"2s\"\n",
        receiver.url("/ok"),
        receiver.url("/hang"),
    );
    let redis_toml = redis.toml(data.path());
    let builder = |name: &str| {
        GatewayBuilder::new()
            .toml(&secrets.identity(&provider, "", &[AUDIENCE]))
            .toml(&shared_toml(data.path(), name, &redis_toml, &receivers))
            .route_with("gogs", "gogs", &[HOST], &up.url(), &secrets.gogs_extra())
            .route_with(
                "lightstep",
                "otlp",
                &["otlp.example.test"],
                &up.url(),
                &secrets.otlp_extra(),
            )
            .route("public", "plain", &[PUBLIC_HOST], &up.url(), "")
    };
    let a = builder("gw-a").start(&ca);
    let b = builder("gw-b").start(&ca);

    // The ACL lets the gateway read INFO (it checks that Redis keeps an append-only file).
    wait_for(10, "A's check of Redis persistence", || {
        a.log().contains("it keeps an append-only file")
    });

    // 1. A session signed in through A opens on B, and signing out through B is refused by
    //    A within seconds, copies of the cookie included.
    let outcome = tokio::task::block_in_place(|| {
        provider.browser_login(&a.url("/platform/app"), "alice", PASSWORD)
    });
    assert!(outcome.ok, "browser: {}\n{}", outcome.stderr, a.log());
    assert_eq!(outcome.status, Some(200));
    let cookies = outcome.cookie_header();
    up.clear();
    let (status, text) = get(&b, &ca, HOST, "/platform/app", &cookies).await;
    assert_eq!(status, 200, "B refused A's session: {text}");
    assert_eq!(up.requests()[0].header("x-webauth-user"), Some("alice"));
    let (status, text) = sign_out(&b, &ca, &cookies).await;
    assert_eq!(status, 303, "sign-out through B: {text}");
    let signed_out = Instant::now();
    let mut refused_by_a = false;
    while signed_out.elapsed() < Duration::from_secs(5) {
        let (status, _) = get(&a, &ca, HOST, "/platform/app", &cookies).await;
        if status == 302 {
            refused_by_a = true;
            break;
        }
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused_by_a,
        "A still accepts a session signed out through B"
    );
    eprintln!(
        "A refused the signed-out session after {:?}",
        signed_out.elapsed()
    );
    let (status, _) = get(&b, &ca, HOST, "/platform/app", &cookies).await;
    assert_eq!(status, 302, "B accepts the session it signed out");
    assert_eq!(a.metric("gatehouse_session_revocations"), 1.0);
    // And the other way: signed in through B, signed out through A, refused by B.
    let outcome = tokio::task::block_in_place(|| {
        provider.browser_login(&b.url("/platform/app"), "bob", PASSWORD)
    });
    assert!(outcome.ok, "browser: {}\n{}", outcome.stderr, b.log());
    let bobs = outcome.cookie_header();
    let (status, text) = get(&a, &ca, HOST, "/platform/app", &bobs).await;
    assert_eq!(status, 200, "A refused B's session: {text}");
    let (status, text) = sign_out(&a, &ca, &bobs).await;
    assert_eq!(status, 303, "sign-out through A: {text}");
    let signed_out = Instant::now();
    loop {
        let (status, _) = get(&b, &ca, HOST, "/platform/app", &bobs).await;
        if status == 302 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            signed_out.elapsed() < Duration::from_secs(5),
            "B still accepts a session signed out through A"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "B refused the signed-out session after {:?}",
        signed_out.elapsed()
    );
    // alice's session is still refused: the second sign-out did not replace the first.
    assert_eq!(get(&a, &ca, HOST, "/platform/app", &cookies).await.0, 302);
    assert_eq!(b.metric("gatehouse_session_revocations"), 2.0);

    // 2. One delivery, sent to each replica (Gogs redelivering through the balancer):
    //    recorded and forwarded once; the second is acknowledged as a duplicate.
    let first = push_payload(
        "platform/app",
        "refs/heads/main",
        ZEROS,
        &[(sha(1), "one".into())],
    );
    let (s1, t1) = deliver_signed(&ca, &a, "push", "d-1", &first).await;
    let (s2, t2) = deliver_signed(&ca, &b, "push", "d-1", &first).await;
    assert_eq!((s1, s2), (200, 200), "{t1}\n{t2}");
    assert!(t2.contains("duplicate"), "B did not see A's delivery: {t2}");
    wait_for(10, "the forward of d-1", || {
        receiver
            .requests()
            .iter()
            .any(|r| r["headers"]["x-gogs-delivery"] == "d-1")
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let forwards: Vec<_> = receiver
        .requests()
        .into_iter()
        .filter(|r| r["headers"]["x-gogs-delivery"] == "d-1")
        .collect();
    assert_eq!(forwards.len(), 1, "forwarded more than once: {forwards:?}");
    assert_eq!(forwards[0]["standard_ok"], true);
    for gw in [&a, &b] {
        let (found, out) = commit_known(&gw.config, &sha(1));
        assert!(found, "{out}");
    }

    // 3. Redis killed: intake answers 503 (so Gogs redelivers) and says why; requests that
    //    need no Redis are served. Restarted: what it acknowledged is all there.
    for n in 2..5 {
        let body = push_payload(
            "platform/app",
            "refs/heads/main",
            &sha(n - 1),
            &[(sha(n), format!("c{n}"))],
        );
        let (s, t) = deliver_signed(
            &ca,
            if n % 2 == 0 { &a } else { &b },
            "push",
            &format!("d-{n}"),
            &body,
        )
        .await;
        assert_eq!(s, 200, "{t}");
    }
    redis.kill();
    let down = push_payload(
        "platform/app",
        "refs/heads/main",
        &sha(4),
        &[(sha(5), "c5".into())],
    );
    let (s, t) = deliver_signed(&ca, &a, "push", "d-5", &down).await;
    assert_eq!(s, 503, "with Redis down: {t}");
    let (s, t) = get(&a, &ca, PUBLIC_HOST, "/status", "").await;
    assert_eq!(s, 200, "a route that needs no Redis failed: {t}");
    assert_eq!(a.metric("gatehouse_redis_up"), 0.0);
    assert!(a.metric(r#"gatehouse_redis_errors_total{operation="receive"}"#) >= 1.0);
    tokio::task::block_in_place(|| redis.restart());
    let restarted = Instant::now();
    for n in 1..5 {
        let (found, out) = commit_known(&b.config, &sha(n));
        assert!(
            found,
            "commit {n} lost in the Redis restart: {out}\n{}",
            redis.log()
        );
    }
    let mut accepted = false;
    for _ in 0..30 {
        let (s, _) = deliver_signed(&ca, &a, "push", "d-5", &down).await;
        if s == 200 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        accepted,
        "intake did not recover after Redis came back:\n{}",
        a.log()
    );
    assert_eq!(a.metric("gatehouse_redis_up"), 1.0);
    // A forward taken just before the kill (the script ran, its reply was lost) waits out
    // its lease: the receivers' longest timeout (2 s) + 30 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: Vec<String> = receiver
            .requests()
            .iter()
            .filter_map(|r| r["headers"]["x-gogs-delivery"].as_str().map(String::from))
            .collect();
        if (1..6).all(|n| seen.contains(&format!("d-{n}"))) {
            break;
        }
        if Instant::now() > deadline {
            let (_, list) = gatehouse(&["webhooks", "list"], &a.config);
            panic!(
                "not every forward arrived after the restart: {seen:?}\n{list}\nA:\n{}\nB:\n{}",
                a.log(),
                b.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "every forward arrived {:?} after Redis restarted",
        restarted.elapsed()
    );

    // 4. A forward taken by one replica, which is killed mid-attempt, is delivered by the
    //    other once the lease runs out (the receivers' longest timeout, 2 s, + 30 s).
    let (s, t) = deliver_signed(
        &ca,
        &b,
        "push",
        "d-slow",
        &push_payload(
            "slow/app",
            "refs/heads/main",
            ZEROS,
            &[(sha(9), "slow".into())],
        ),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    let started = receiver.log.with_extension("jsonl.started");
    wait_for(10, "an attempt in flight", || {
        std::fs::read_to_string(&started).is_ok_and(|t| t.contains("/hang"))
    });
    let holds = |gw: &TestGateway| {
        gw.log()
            .lines()
            .any(|l| l.contains("webhook forward attempt started") && l.contains("delivery=d-slow"))
    };
    assert!(
        holds(&a) != holds(&b),
        "both or neither replica took the forward"
    );
    let ((mut holder, _), (other, other_name)) = if holds(&a) {
        ((a, "gw-a"), (b, "gw-b"))
    } else {
        ((b, "gw-b"), (a, "gw-a"))
    };
    assert_no_permission_errors(&holder);
    holder.signal("KILL");
    let _ = holder.wait(10);
    let killed = Instant::now();
    std::fs::write(&receiver.accept, "").unwrap();
    wait_for(
        60,
        "the killed replica's forward delivered by the other",
        || {
            let (ok, list) =
                gatehouse(&["webhooks", "list", "--state", "delivered"], &other.config);
            ok && list.lines().any(|l| l.contains("d-slow"))
        },
    );
    eprintln!(
        "{other_name} delivered the killed replica's forward {:?} after the kill",
        killed.elapsed()
    );
    let attempts: Vec<_> = records(&data.path().join(format!("audit-{other_name}")))
        .into_iter()
        .filter(|r| {
            r.kind == "webhook"
                && r.detail
                    .as_deref()
                    .is_some_and(|d| d.starts_with("forward of delivery d-slow"))
        })
        .collect();
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert_eq!(attempts[0].status, Some(200));
    let (ok, list) = gatehouse(&["webhooks", "list"], &other.config);
    assert!(ok, "{list}");
    assert!(list.contains("0 pending, 0 dead in all"), "{list}");
    assert_no_permission_errors(&other);
    // Nothing was forwarded twice. A forward delivered just before Redis went down has its
    // outcome recorded once Redis is back; had it been lost, the forward's lease would have
    // run out long before now and the receiver would have seen the delivery again.
    let sent = receiver.requests();
    for n in 1..6 {
        let id = format!("d-{n}");
        let times = sent
            .iter()
            .filter(|r| r["headers"]["x-gogs-delivery"].as_str() == Some(id.as_str()))
            .count();
        assert_eq!(times, 1, "delivery {id} reached the receiver {times} times");
    }

    // 5. Each replica kept its own chain; verify and export read them as one log.
    let dirs: Vec<String> = ["gw-a", "gw-b"]
        .iter()
        .map(|n| data.path().join(format!("audit-{n}")).display().to_string())
        .collect();
    let mut args = vec!["audit", "verify"];
    args.extend(dirs.iter().map(String::as_str));
    let (ok, out) = audit_cli(&args);
    // The killed replica's last file ends where it stopped: verify accepts it and says so.
    assert!(ok, "{out}");
    for n in ["gw-a", "gw-b"] {
        assert!(out.contains(n), "verify did not read {n}: {out}");
    }
    let mut args = vec![
        "audit",
        "export",
        "--since",
        "2000-01-01T00:00:00Z",
        "--until",
        "2100-01-01T00:00:00Z",
        "--format",
        "jsonl",
        "--kind",
        "webhook",
    ];
    args.extend(dirs.iter().map(String::as_str));
    let (ok, out) = audit_cli(&args);
    assert!(ok, "{out}");
    // (time, replica, seq, detail) of each exported line, in output order.
    let rows: Vec<(String, String, u64, String)> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some((
                v["time"].as_str()?.to_string(),
                v["replica"].as_str()?.to_string(),
                v["seq"].as_u64()?,
                v["detail"].as_str().unwrap_or("").to_string(),
            ))
        })
        .collect();
    assert!(rows.len() >= 6, "{out}");
    // What the merge promises (docs/audit.md): each replica's records in chain order, and
    // the output switches to another replica only when that replica's next record is older
    // than the next one of the replica it leaves. (A record's time is its request's arrival
    // and it is written once decided, so one chain is not strictly ordered by time.)
    for r in ["gw-a", "gw-b"] {
        let seqs: Vec<u64> = rows.iter().filter(|x| x.1 == r).map(|x| x.2).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{r}'s records out of chain order: {rows:#?}"
        );
    }
    for (i, w) in rows.windows(2).enumerate() {
        if w[0].1 == w[1].1 {
            continue;
        }
        if let Some(next_of_left) = rows[i + 1..].iter().find(|x| x.1 == w[0].1) {
            assert!(
                w[1].0 <= next_of_left.0,
                "export switched from {} to {} although {}'s next record is older: {rows:#?}",
                w[0].1,
                w[1].1,
                w[0].1
            );
        }
    }
    let replicas: std::collections::HashSet<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["replica"].as_str().map(String::from))
        .collect();
    assert!(replicas.len() >= 2, "{replicas:?}");
    drop(redis);
}

#[test]
fn check_reads_the_redis_password_and_ca_without_connecting() {
    let ca = DevCa::new();
    let dir = tempfile::tempdir().unwrap();
    let builder =
        GatewayBuilder::new().route("public", "plain", &[PUBLIC_HOST], "http://127.0.0.1:9", "");
    std::fs::copy(ca.cert(), dir.path().join("server.crt")).unwrap();
    std::fs::copy(ca.key(), dir.path().join("server.key")).unwrap();
    support::gateway::write_audit_key(&dir.path().join("audit-signing.pem"));
    let empty_ca = dir.path().join("empty-ca.pem");
    std::fs::write(&empty_ca, "not a certificate\n").unwrap();
    let config = dir.path().join("gatehouse.toml");
    let check = |redis: &str| {
        let text = builder.clone().toml(redis).config_text(dir.path());
        std::fs::write(&config, text).unwrap();
        let (ok, out, err) = support::run_with_timeout(
            std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
                .arg("check")
                .arg("--config")
                .arg(&config),
            30,
        );
        (ok, format!("{out}{err}"))
    };
    let missing = dir.path().join("no-such-password");
    let (ok, out) = check(&format!(
        "[redis]\nurl = \"redis://127.0.0.1:9\"\npassword_file = {:?}\n",
        missing.display().to_string()
    ));
    assert!(
        !ok && out.contains("redis.password") && out.contains("no-such-password"),
        "{out}"
    );
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret-redis-pw").unwrap();
    let (ok, out) = check(&format!(
        "[redis]\nurl = \"rediss://127.0.0.1:9\"\npassword_file = {:?}\nca_file = {:?}\n",
        pw.display().to_string(),
        empty_ca.display().to_string()
    ));
    assert!(
        !ok && out.contains("redis.ca_file") && out.contains("no PEM certificate"),
        "{out}"
    );
    assert!(!out.contains("secret-redis-pw"), "{out}");
    let (ok, out) = check(&format!(
        "[redis]\nurl = \"rediss://127.0.0.1:9\"\npassword_file = {:?}\nca_file = {:?}\n",
        pw.display().to_string(),
        ca.ca().display().to_string()
    ));
    assert!(ok, "{out}");
}
