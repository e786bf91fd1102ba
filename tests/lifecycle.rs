//! The gateway as an operator runs it: reloads, shutdown, upgrades, and the command line.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::raw::{self, exchange, read_one, read_response, try_connect};
use support::{DevCa, GatewayBuilder, HOST, RecordingUpstream, Reply, run_with_timeout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reloads_on_sighup_and_file_change_without_dropping_live_connections() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);

    // A live keep-alive connection made with the first certificate.
    let mut live = raw::connect(gw.https, &ca.ca(), HOST).await;
    live.write_all(get("/one").as_bytes()).await.unwrap();
    assert_eq!(read_one(&mut live).await.status(), Some(200));

    // A second CA and certificate replace the files; SIGHUP installs them.
    let ca2 = DevCa::new();
    std::fs::copy(ca2.cert(), gw.dir.path().join("server.crt")).unwrap();
    std::fs::copy(ca2.key(), gw.dir.path().join("server.key")).unwrap();
    gw.signal("HUP");
    let addr = gw.https;
    gw.eventually(5, "new certificate served", || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(try_connect(addr, &ca2.ca(), HOST))
        })
        .is_ok()
    });
    assert!(
        try_connect(gw.https, &ca.ca(), HOST).await.is_err(),
        "old certificate still served"
    );
    // The old connection still works.
    live.write_all(get("/two").as_bytes()).await.unwrap();
    assert_eq!(
        read_one(&mut live).await.status(),
        Some(200),
        "live connection dropped by reload"
    );

    // Garbage in the certificate file: the current certificate stays, the failure is counted.
    std::fs::write(gw.dir.path().join("server.crt"), "not a certificate").unwrap();
    gw.signal("HUP");
    gw.eventually(5, "failed reload counted", || {
        gw.metric(r#"gatehouse_tls_certificate_reloads_total{result="error"}"#) >= 1.0
    });
    assert!(
        try_connect(gw.https, &ca2.ca(), HOST).await.is_ok(),
        "bad certificate replaced the good one"
    );
    assert!(
        gw.log().contains("certificate reload failed"),
        "{}",
        gw.log()
    );

    // A key that does not match the certificate is refused too.
    std::fs::copy(ca2.cert(), gw.dir.path().join("server.crt")).unwrap();
    std::fs::copy(ca.key(), gw.dir.path().join("server.key")).unwrap();
    let before = gw.metric(r#"gatehouse_tls_certificate_reloads_total{result="error"}"#);
    gw.signal("HUP");
    gw.eventually(5, "mismatched key refused", || {
        gw.metric(r#"gatehouse_tls_certificate_reloads_total{result="error"}"#) > before
    });
    assert!(try_connect(gw.https, &ca2.ca(), HOST).await.is_ok());

    // Writing a good pair is picked up without a signal (file watch).
    let ca3 = DevCa::new();
    std::fs::copy(ca3.key(), gw.dir.path().join("server.key")).unwrap();
    std::fs::copy(ca3.cert(), gw.dir.path().join("server.crt")).unwrap();
    gw.eventually(5, "watched files reloaded", || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(try_connect(addr, &ca3.ca(), HOST))
        })
        .is_ok()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reloads_on_sighup_and_a_broken_config_keeps_the_running_one() {
    let ca = DevCa::new();
    let first = RecordingUpstream::start(Reply::Status(201)).await;
    let second = RecordingUpstream::start(Reply::Status(202)).await;
    let builder = GatewayBuilder::new().route("web", "plain", &[HOST], &first.url(), "");
    let gw = builder.start(&ca);
    let status = |gw_addr| {
        let ca = ca.ca();
        async move {
            exchange(
                gw_addr,
                &ca,
                HOST,
                format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .status()
        }
    };
    assert_eq!(status(gw.https).await, Some(201));

    let new_text = GatewayBuilder::new()
        .route("web", "plain", &[HOST], &second.url(), "")
        .config_text(gw.dir.path());
    std::fs::write(&gw.config, &new_text).unwrap();
    gw.signal("HUP");
    gw.eventually(5, "config reloaded", || {
        gw.metric(r#"gatehouse_config_reloads_total{result="success"}"#) >= 1.0
    });
    assert_eq!(status(gw.https).await, Some(202));

    std::fs::write(
        &gw.config,
        new_text.replace("kind = \"plain\"", "kind = \"plain\"\nbogus_key = 1"),
    )
    .unwrap();
    gw.signal("HUP");
    gw.eventually(5, "failed reload counted", || {
        gw.metric(r#"gatehouse_config_reloads_total{result="error"}"#) >= 1.0
    });
    assert_eq!(
        status(gw.https).await,
        Some(202),
        "broken config replaced the running one"
    );
    let log = gw.log();
    assert!(
        log.contains("unknown field `bogus_key`") && log.contains("gatehouse.toml:"),
        "{log}"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_refuses_new_connections() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Delay(Duration::from_secs(2))).await;
    let mut gw = GatewayBuilder::new()
        .server("shutdown_grace = \"10s\"")
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let mut s = raw::connect(gw.https, &ca.ca(), HOST).await;
    s.write_all(get("/slow").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(gw.https).await.is_err(),
        "new connections still accepted while draining"
    );
    let r = read_response(&mut s, Duration::from_secs(5)).await;
    assert_eq!(
        r.status(),
        Some(200),
        "in-flight request was cut: {}",
        r.text
    );
    assert!(r.text.contains("slow ok"));
    let status = gw.wait(10);
    assert!(status.success(), "exit status {status}");
    assert!(gw.log().contains("all connections drained"), "{}", gw.log());
}

#[tokio::test]
async fn the_drain_deadline_bounds_shutdown() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Delay(Duration::from_secs(30))).await;
    let mut gw = GatewayBuilder::new()
        .server("shutdown_grace = \"1s\"")
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let mut s = raw::connect(gw.https, &ca.ca(), HOST).await;
    s.write_all(get("/forever").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    gw.signal("TERM");
    gw.wait(10);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(gw.log().contains("drain deadline reached"), "{}", gw.log());
}

#[tokio::test]
async fn websocket_upgrades_pass_through_in_both_directions() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Upgrade).await;
    let gw = GatewayBuilder::new()
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let mut s = raw::connect(gw.https, &ca.ca(), HOST).await;
    s.write_all(
        format!("GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let head = read_one(&mut s).await;
    assert_eq!(
        head.text.lines().next(),
        Some("HTTP/1.1 101 Switching Protocols"),
        "{}",
        head.text
    );
    assert_eq!(head.header("upgrade").as_deref(), Some("websocket"));
    for msg in [
        &b"frame one"[..],
        b"\x00\x01binary\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("echo timed out")
            .unwrap();
        assert_eq!(back, msg);
    }
    let seen = up.requests();
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
    assert_eq!(
        seen[0].header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
}

#[tokio::test]
async fn websocket_is_refused_where_the_route_disallows_it() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Upgrade).await;
    let gw = GatewayBuilder::new()
        .route("web", "plain", &[HOST], &up.url(), "websocket = false")
        .start(&ca);
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!(
            "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    // The upstream answers 101 to a request the gateway did not upgrade: 502.
    assert_eq!(r.status(), Some(502), "{}", r.text);
    assert!(up.requests()[0].header("upgrade").is_none());
}

#[test]
fn check_reports_every_problem_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:8443\"]\nshutdown_grace = \"soon\"\n\n[[routes]]\nname = \"gogs\"\nkind = \"gogs\"\nhosts = [\"git.example.com\"]\nupstream = \"gopher://x\"\n",
    )
    .unwrap();
    let (ok, out, err) = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("check")
            .arg("--config")
            .arg(&path),
        20,
    );
    assert!(!ok, "check accepted a bad config: {out}");
    let p = path.display().to_string();
    assert!(
        err.contains(&format!(
            "{p}:3:18: server.shutdown_grace: \"soon\" is not a duration"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("{p}:9:12: routes[0].upstream: scheme \"gopher\" is not supported (allowed: http, https)")), "{err}");
    assert!(
        err.contains("server.listen: TLS listeners need a [tls] section"),
        "{err}"
    );

    // A config whose certificate files are missing is refused by check, naming the file.
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:8443\"]\n[tls]\ncert_file = \"missing.crt\"\nkey_file = \"missing.key\"\n[audit]\ndir = \"audit\"\n[[routes]]\nname = \"gogs\"\nkind = \"gogs\"\nhosts = [\"git.example.com\"]\nupstream = \"http://127.0.0.1:3000\"\npublic = true\n",
    )
    .unwrap();
    let (ok, _, err) = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("check")
            .arg("--config")
            .arg(&path),
        20,
    );
    assert!(!ok);
    assert!(err.contains("missing.crt: cannot read"), "{err}");
}

#[test]
fn check_accepts_the_example_config_with_dev_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/gatehouse.example.toml"
    ))
    .unwrap();
    let config = dir.path().join("gatehouse.toml");
    // The audit log's directory and signing key go where an operator would put theirs.
    let key = dir.path().join("audit-signing.pem");
    support::gateway::write_audit_key(&key);
    let example = example
        .replace(
            "\"/etc/gatehouse/audit-signing.pem\"",
            &format!("{:?}", key.display().to_string()),
        )
        .replace(
            "\"/var/lib/gatehouse/audit\"",
            &format!("{:?}", dir.path().join("audit").display().to_string()),
        );
    std::fs::write(&config, example).unwrap();
    // The example's policies come along (the config names them relative to itself).
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(policies.join("tests")).unwrap();
    for sub in ["", "tests"] {
        let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("policies")
            .join(sub);
        for entry in std::fs::read_dir(&from).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, policies.join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    let bin = env!("CARGO_BIN_EXE_gatehouse");
    let (ok, out, err) = run_with_timeout(
        Command::new(bin)
            .args(["certs", "dev", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(dir.path().join("certs")),
        20,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("git.example.com") && out.contains("otlp.example.com"),
        "{out}"
    );
    // Without its secrets the example is refused, naming the first missing one.
    let (ok, _, err) = run_with_timeout(
        Command::new(bin).arg("check").arg("--config").arg(&config),
        20,
    );
    assert!(!ok, "check passed without secrets");
    assert!(
        err.contains("environment variable GATEHOUSE_SESSION_KEYS is not set"),
        "{err}"
    );
    // With them (and never echoing them), it passes.
    let secrets = [
        (
            "GATEHOUSE_SESSION_KEYS",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        ),
        ("GATEHOUSE_OIDC_CLIENT_SECRET", "oidc-secret-value-1"),
        ("GATEHOUSE_GOGS_BROKER_TOKEN", "broker-token-value-2"),
        (
            "GATEHOUSE_LIGHTSTEP_ACCESS_TOKEN",
            "lightstep-token-value-3",
        ),
    ];
    let mut cmd = Command::new(bin);
    cmd.arg("check").arg("--config").arg(&config);
    for (k, v) in secrets {
        cmd.env(k, v);
    }
    let (ok, out, err) = run_with_timeout(&mut cmd, 20);
    assert!(ok, "{err}");
    assert!(out.contains("OK (2 routes, 1 TLS listener"), "{out}");
    for (_, v) in secrets {
        assert!(
            !out.contains(v) && !err.contains(v),
            "check printed a secret"
        );
    }
    // Existing files are not overwritten.
    let (ok, _, err) = run_with_timeout(
        Command::new(bin)
            .args(["certs", "dev", "--host", "x.test", "--out"])
            .arg(dir.path().join("certs")),
        20,
    );
    assert!(!ok && err.contains("already exists"), "{err}");
}

#[test]
fn help_explains_every_subcommand() {
    let (ok, out, _) = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_gatehouse")).arg("--help"),
        20,
    );
    assert!(ok);
    for sub in ["serve", "check", "certs"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing from --help:\n{out}"
        );
    }
    let (ok, out, _) = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_gatehouse")).args(["certs", "dev", "--help"]),
        20,
    );
    assert!(
        ok && out.contains("--out") && out.contains("--host"),
        "{out}"
    );
}

#[tokio::test]
async fn metrics_use_prometheus_names() {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .route("web", "plain", &[HOST], &up.url(), "")
        .start(&ca);
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200));
    let text = gw.metrics_text();
    assert!(
        text.lines().next().is_some_and(|l| l.ends_with("200 OK")),
        "{text}"
    );
    for name in [
        "gatehouse_http_requests_total",
        "gatehouse_http_request_duration_seconds_bucket",
        "gatehouse_active_connections",
        "gatehouse_connections_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert_eq!(
        gw.metric(r#"gatehouse_http_requests_total{method="GET",route="web",status_class="2xx"}"#),
        1.0
    );
    // A failed handshake is counted.
    let _ = tokio::net::TcpStream::connect(gw.https)
        .await
        .unwrap()
        .write_all(b"not TLS at all\r\n\r\n")
        .await;
    gw.eventually(3, "handshake failure counted", || {
        gw.metrics_text()
            .contains("gatehouse_tls_handshake_failures_total{reason=")
    });
}
