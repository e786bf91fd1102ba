//! The real `git` client through the gateway over TLS to a real `git http-backend`.

mod support;

use std::path::Path;

use support::{DevCa, GatewayBuilder, GitServer, HOST, curl, git, run_with_timeout};

fn must(cmd: &mut std::process::Command, secs: u64) -> String {
    let (ok, out, err) = run_with_timeout(cmd, secs);
    assert!(ok, "{cmd:?} failed:\nstdout: {out}\nstderr: {err}");
    format!("{out}{err}")
}

fn commit_file(ca: &DevCa, dir: &Path, port: u16, name: &str, content: &[u8], message: &str) {
    std::fs::write(dir.join(name), content).expect("write file");
    must(&mut git(ca, dir, port, &["add", name]), 30);
    must(
        &mut git(ca, dir, port, &["commit", "--quiet", "-m", message]),
        30,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clone_push_and_fetch_pass_through_the_gateway() {
    let ca = DevCa::new();
    let repos = tempfile::tempdir().unwrap();
    let server = GitServer::start(repos.path()).await;
    server.create_repo("platform/app.git");
    let gw = GatewayBuilder::new()
        .route("gogs", "gogs", &[HOST], &server.url(), "")
        .start(&ca);
    let port = gw.port();
    let work = tempfile::tempdir().unwrap();
    let url = gw.url("/platform/app.git");

    tokio::task::spawn_blocking(move || {
        let a = work.path().join("a");
        let b = work.path().join("b");
        must(
            &mut git(
                &ca,
                work.path(),
                port,
                &["clone", "--quiet", &url, a.to_str().unwrap()],
            ),
            60,
        );
        commit_file(
            &ca,
            &a,
            port,
            "README.md",
            b"hello through the gateway\n",
            "first commit",
        );
        must(
            &mut git(
                &ca,
                &a,
                port,
                &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
            ),
            60,
        );

        must(
            &mut git(
                &ca,
                work.path(),
                port,
                &["clone", "--quiet", &url, b.to_str().unwrap()],
            ),
            60,
        );
        assert_eq!(
            std::fs::read(b.join("README.md")).unwrap(),
            b"hello through the gateway\n"
        );

        commit_file(&ca, &a, port, "second.txt", b"two\n", "second commit");
        must(
            &mut git(
                &ca,
                &a,
                port,
                &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
            ),
            60,
        );
        must(&mut git(&ca, &b, port, &["fetch", "--quiet", "origin"]), 60);
        let log = must(
            &mut git(&ca, &b, port, &["log", "--format=%s", "origin/main"]),
            30,
        );
        assert_eq!(
            log.lines().collect::<Vec<_>>(),
            ["second commit", "first commit"]
        );
    })
    .await
    .unwrap();

    // Every request reached git with forwarding headers set from the socket.
    let seen = server.requests();
    assert!(
        seen.iter().any(|(t, _)| t.contains("git-receive-pack")),
        "no push reached the server"
    );
    for (target, headers) in &seen {
        assert_eq!(
            headers.get("x-forwarded-for").unwrap(),
            "127.0.0.1",
            "{target}"
        );
        assert_eq!(
            headers.get("x-forwarded-proto").unwrap(),
            "https",
            "{target}"
        );
        assert_eq!(
            headers.get("x-forwarded-host").unwrap().to_str().unwrap(),
            format!("{HOST}:{port}"),
            "{target}"
        );
        assert!(headers.get("x-request-id").is_some(), "{target}");
    }
    assert!(
        gw.metric(
            r#"gatehouse_http_requests_total{method="POST",route="gogs",status_class="2xx"}"#
        ) >= 4.0
    );
}

/// Random bytes so git cannot compress the object.
fn incompressible(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_megabyte_push_and_clone_stream_through_with_flat_memory() {
    let ca = DevCa::new();
    let repos = tempfile::tempdir().unwrap();
    let server = GitServer::start(repos.path()).await;
    server.create_repo("big/data.git");
    let gw = GatewayBuilder::new()
        .route(
            "gogs",
            "gogs",
            &[HOST],
            &server.url(),
            "max_body_bytes = \"1GiB\"",
        )
        .start(&ca);
    let port = gw.port();
    let url = gw.url("/big/data.git");
    let work = tempfile::tempdir().unwrap();

    // Warm up: one small exchange so the baseline includes TLS and pool setup.
    let (ok, _, err) = run_with_timeout(&mut git(&ca, work.path(), port, &["ls-remote", &url]), 30);
    assert!(ok, "{err}");
    let baseline = gw.peak_rss_kib();
    assert!(baseline > 0, "cannot read gateway memory");

    let ca2 = DevCa {
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::copy(ca.ca(), ca2.ca()).unwrap();
    let wd = work.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let a = wd.join("a");
        must(
            &mut git(
                &ca2,
                &wd,
                port,
                &["clone", "--quiet", &url, a.to_str().unwrap()],
            ),
            60,
        );
        commit_file(
            &ca2,
            &a,
            port,
            "blob.bin",
            &incompressible(50 * 1024 * 1024),
            "fifty megabytes",
        );
        must(
            &mut git(
                &ca2,
                &a,
                port,
                &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
            ),
            300,
        );
        let b = wd.join("b");
        must(
            &mut git(
                &ca2,
                &wd,
                port,
                &["clone", "--quiet", &url, b.to_str().unwrap()],
            ),
            300,
        );
        assert_eq!(
            std::fs::metadata(b.join("blob.bin")).unwrap().len(),
            50 * 1024 * 1024
        );
    })
    .await
    .unwrap();

    let peak = gw.peak_rss_kib();
    let growth_mib = (peak.saturating_sub(baseline)) as f64 / 1024.0;
    eprintln!(
        "gateway peak RSS: baseline {baseline} KiB, after 50 MB push+clone {peak} KiB (+{growth_mib:.1} MiB)"
    );
    // Buffering either direction would add at least 50 MiB.
    assert!(
        growth_mib < 25.0,
        "gateway memory grew by {growth_mib:.1} MiB moving 100 MB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http2_reaches_an_http1_upstream() {
    let ca = DevCa::new();
    let repos = tempfile::tempdir().unwrap();
    let server = GitServer::start(repos.path()).await;
    server.create_repo("platform/app.git");
    let gw = GatewayBuilder::new()
        .route("gogs", "gogs", &[HOST], &server.url(), "")
        .start(&ca);
    let url = gw.url("/platform/app.git/info/refs?service=git-upload-pack");
    let (ok, out, err) = run_with_timeout(
        &mut curl(
            &ca,
            gw.port(),
            &[
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code} %{content_type}",
                &url,
            ],
        ),
        30,
    );
    assert!(ok, "{err}");
    assert_eq!(out, "2 200 application/x-git-upload-pack-advertisement");
    let (ok, out, err) = run_with_timeout(
        &mut curl(
            &ca,
            gw.port(),
            &[
                "--http1.1",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                &url,
            ],
        ),
        30,
    );
    assert!(ok, "{err}");
    assert_eq!(out, "1.1 200");
}
