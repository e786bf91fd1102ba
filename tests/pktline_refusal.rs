//! A real `git push` read by `parse_commands` and refused by `report_refusal`.
//!
//! The server stands in for the gateway: it advertises refs with a real
//! `git receive-pack --advertise-refs --stateless-rpc`, parses each push request and answers
//! it with a refusal, never running receive-pack. git must then print the refusal in its own
//! words. Set `PKTLINE_CAPTURE_DIR` to keep the request bodies git sent (the pktline fuzz
//! corpus was seeded that way).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gatehouse::classify::pktline::{
    Commands, RefUpdate, UpdateKind, parse_commands, report_refusal,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const POLICY_REASON: &str = "denied by policy protect-main";

/// What the stand-in server saw of one push request.
struct Seen {
    commands: Commands,
    body: Vec<u8>,
}

struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

struct Options {
    label: &'static str,
    /// Leave `side-band-64k` out of the advertisement, so git asks for a plain report.
    strip_sideband: bool,
}

async fn start(repos: PathBuf, options: Options) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state = Arc::new((repos, options, seen.clone()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, state.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Server { port, seen }
}

type State = (PathBuf, Options, Arc<Mutex<Vec<Seen>>>);

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (repos, options, seen) = &*state;
    let path = req.uri().path().to_owned();
    let repo = repos.join(path.trim_start_matches('/').split('/').next().unwrap());
    let reply = |content_type: &str, body: Vec<u8>| {
        Ok(Response::builder()
            .header("content-type", content_type)
            .header("cache-control", "no-cache")
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    };

    if req.method() == Method::GET
        && path.ends_with("/info/refs")
        && req.uri().query() == Some("service=git-receive-pack")
    {
        let out = tokio::process::Command::new("git")
            .args(["receive-pack", "--advertise-refs", "--stateless-rpc"])
            .arg(&repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let mut advertisement = out.stdout;
        if options.strip_sideband {
            advertisement = without_capability(&advertisement, "side-band-64k");
        }
        let mut body = b"001f# service=git-receive-pack\n0000".to_vec();
        body.extend_from_slice(&advertisement);
        return reply("application/x-git-receive-pack-advertisement", body);
    }

    if req.method() == Method::POST && path.ends_with("/git-receive-pack") {
        assert!(
            req.headers().get("content-encoding").is_none(),
            "push bodies are not compressed by git"
        );
        let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
        if let Ok(dir) = std::env::var("PKTLINE_CAPTURE_DIR") {
            let n = seen.lock().unwrap().len();
            let file = Path::new(&dir).join(format!("{}-{n}.bin", options.label));
            std::fs::write(file, &body).unwrap();
        }
        let commands = parse_commands(&body).expect("git's request parses");
        let reasons = [("refs/heads/main".to_string(), POLICY_REASON.to_string())];
        let answer = if commands.updates.is_empty() {
            Vec::new()
        } else {
            report_refusal(
                &commands.updates,
                &reasons,
                commands.has_capability("side-band-64k"),
            )
        };
        seen.lock().unwrap().push(Seen { commands, body });
        return reply("application/x-git-receive-pack-result", answer);
    }

    Ok(Response::builder()
        .status(StatusCode::NOT_FOUND)
        .body(Full::new(Bytes::new()))
        .unwrap())
}

/// Rewrites the first advertised ref line without one capability word.
fn without_capability(advertisement: &[u8], capability: &str) -> Vec<u8> {
    let len = usize::from_str_radix(std::str::from_utf8(&advertisement[..4]).unwrap(), 16).unwrap();
    let line = &advertisement[4..len];
    let nul = line.iter().position(|&b| b == 0).unwrap();
    let caps = std::str::from_utf8(&line[nul + 1..]).unwrap();
    let kept: Vec<&str> = caps.split(' ').filter(|c| *c != capability).collect();
    assert_ne!(
        kept.len(),
        caps.split(' ').count(),
        "{capability} was advertised"
    );
    let mut payload = line[..=nul].to_vec();
    payload.extend_from_slice(kept.join(" ").as_bytes());
    let mut out = format!("{:04x}", payload.len() + 4).into_bytes();
    out.extend_from_slice(&payload);
    out.extend_from_slice(&advertisement[len..]);
    out
}

fn git(dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    cmd.current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("no_proxy", "*")
        .env("NO_PROXY", "*");
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

async fn run(dir: &Path, args: &[&str]) -> Output {
    tokio::time::timeout(Duration::from_secs(60), git(dir, args).output())
        .await
        .expect("git finished within 60 s")
        .unwrap()
}

async fn must(dir: &Path, args: &[&str]) {
    let out = run(dir, args).await;
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

/// A bare `r.git` under `repos` and a work tree `client` with one commit on `main`.
async fn repositories(root: &Path, object_format: &str) -> (PathBuf, PathBuf) {
    let repos = root.join("repos");
    let client = root.join("client");
    std::fs::create_dir_all(&repos).unwrap();
    std::fs::create_dir_all(&client).unwrap();
    let format = format!("--object-format={object_format}");
    must(
        &repos,
        &["init", "--quiet", "--bare", "-b", "main", &format, "r.git"],
    )
    .await;
    must(&client, &["init", "--quiet", "-b", "main", &format, "."]).await;
    std::fs::write(client.join("README.md"), "hello\n").unwrap();
    must(&client, &["add", "README.md"]).await;
    must(&client, &["commit", "--quiet", "-m", "first"]).await;
    (repos, client)
}

async fn push(server: &Server, client: &Path, extra: &[&str]) -> String {
    let url = format!("http://127.0.0.1:{}/r.git", server.port);
    let mut args = vec!["push", url.as_str()];
    args.extend_from_slice(extra);
    let out = run(client, &args).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the push must fail: {stderr}");
    stderr
}

fn only_request(server: &Server) -> Seen {
    let mut seen = server.seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "one push request");
    seen.pop().unwrap()
}

fn names_and_kinds(updates: &[RefUpdate]) -> Vec<(&str, UpdateKind)> {
    updates.iter().map(|u| (u.name.as_str(), u.kind)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_reports_the_refusal_over_side_band() {
    let root = tempfile::tempdir().unwrap();
    let (repos, client) = repositories(root.path(), "sha1").await;
    let options = Options {
        label: "sideband",
        strip_sideband: false,
    };
    let server = start(repos, options).await;

    let stderr = push(&server, &client, &["main"]).await;
    assert!(
        stderr.contains("! [remote rejected] main -> main (denied by policy protect-main)"),
        "{stderr}"
    );

    let seen = only_request(&server);
    let c = &seen.commands;
    assert_eq!(
        names_and_kinds(&c.updates),
        [("refs/heads/main", UpdateKind::Create)]
    );
    assert_eq!(c.updates[0].old, "0".repeat(40));
    assert_eq!(c.updates[0].new.len(), 40);
    assert!(c.has_capability("side-band-64k"), "{:?}", c.capabilities);
    assert!(
        c.has_capability("report-status") || c.has_capability("report-status-v2"),
        "{:?}",
        c.capabilities
    );
    assert!(seen.body[c.consumed..].starts_with(b"PACK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_reports_the_refusal_without_side_band() {
    let root = tempfile::tempdir().unwrap();
    let (repos, client) = repositories(root.path(), "sha1").await;
    let options = Options {
        label: "plain",
        strip_sideband: true,
    };
    let server = start(repos, options).await;

    let stderr = push(&server, &client, &["main"]).await;
    assert!(
        stderr.contains("! [remote rejected] main -> main (denied by policy protect-main)"),
        "{stderr}"
    );
    let seen = only_request(&server);
    assert!(!seen.commands.has_capability("side-band-64k"));
    assert!(seen.body[seen.commands.consumed..].starts_with(b"PACK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ref_is_refused_and_only_the_denied_one_names_the_policy() {
    let root = tempfile::tempdir().unwrap();
    let (repos, client) = repositories(root.path(), "sha1").await;
    must(&client, &["branch", "feature"]).await;
    must(&client, &["tag", "v1"]).await;
    let options = Options {
        label: "several",
        strip_sideband: false,
    };
    let server = start(repos, options).await;

    let stderr = push(&server, &client, &["main", "feature", "v1"]).await;
    for line in [
        "! [remote rejected] main -> main (denied by policy protect-main)",
        "! [remote rejected] feature -> feature (rejected: another update in this push was denied)",
        "! [remote rejected] v1 -> v1 (rejected: another update in this push was denied)",
    ] {
        assert!(stderr.contains(line), "{line}\n{stderr}");
    }
    let seen = only_request(&server);
    let mut got = names_and_kinds(&seen.commands.updates);
    got.sort_by_key(|(name, _)| *name);
    assert_eq!(
        got,
        [
            ("refs/heads/feature", UpdateKind::Create),
            ("refs/heads/main", UpdateKind::Create),
            ("refs/tags/v1", UpdateKind::Create),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_options_are_read_when_advertised() {
    let root = tempfile::tempdir().unwrap();
    let (repos, client) = repositories(root.path(), "sha1").await;
    must(
        &repos.join("r.git"),
        &["config", "receive.advertisePushOptions", "true"],
    )
    .await;
    let options = Options {
        label: "push-options",
        strip_sideband: false,
    };
    let server = start(repos, options).await;

    let stderr = push(
        &server,
        &client,
        &["-o", "ci.skip", "-o", "reviewer=alice", "main"],
    )
    .await;
    assert!(
        stderr.contains("(denied by policy protect-main)"),
        "{stderr}"
    );
    let seen = only_request(&server);
    assert!(seen.commands.has_capability("push-options"));
    assert_eq!(seen.commands.push_options, ["ci.skip", "reviewer=alice"]);
    assert!(seen.body[seen.commands.consumed..].starts_with(b"PACK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha256_repositories_use_64_digit_ids() {
    let root = tempfile::tempdir().unwrap();
    let (repos, client) = repositories(root.path(), "sha256").await;
    let options = Options {
        label: "sha256",
        strip_sideband: false,
    };
    let server = start(repos, options).await;

    let stderr = push(&server, &client, &["main"]).await;
    assert!(
        stderr.contains("! [remote rejected] main -> main (denied by policy protect-main)"),
        "{stderr}"
    );
    let seen = only_request(&server);
    let update = &seen.commands.updates[0];
    assert_eq!((update.old.len(), update.new.len()), (64, 64));
    assert!(seen.commands.has_capability("object-format=sha256"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_carry_no_pack() {
    let root = tempfile::tempdir().unwrap();
    let (repos, client) = repositories(root.path(), "sha1").await;
    let bare = repos.join("r.git");
    must(
        &client,
        &["push", "--quiet", bare.to_str().unwrap(), "main:old"],
    )
    .await;
    let options = Options {
        label: "delete",
        strip_sideband: false,
    };
    let server = start(repos, options).await;

    let stderr = push(&server, &client, &[":old"]).await;
    assert!(
        stderr
            .contains("! [remote rejected] old (rejected: another update in this push was denied)"),
        "{stderr}"
    );
    let seen = only_request(&server);
    assert_eq!(
        names_and_kinds(&seen.commands.updates),
        [("refs/heads/old", UpdateKind::Delete)]
    );
    assert_eq!(seen.commands.consumed, seen.body.len());
}
