//! Path and host confusion: spellings that one component reads differently from another.
//! Each is refused (never normalised into a second meaning) and never forwarded.

use crate::harness::Stack;
use crate::support::HOST;

fn get(s: &Stack, target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        s.host()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_dot_segments_are_refused() {
    let s = Stack::plain().await;
    for target in [
        "/a/%2e%2e/admin",
        "/a/%2E%2E/admin",
        "/a/.%2e/admin",
        "/a/%2e/admin",
    ] {
        s.refused(target, get(&s, target).as_bytes(), 400, "bad path")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_dot_segments_are_refused() {
    let s = Stack::plain().await;
    for target in ["/a/../admin", "/a/./admin", "/.."] {
        s.refused(target, get(&s, target).as_bytes(), 400, "bad path")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_encoded_separators_are_refused() {
    let s = Stack::plain().await;
    for target in ["/a/%252e%252e/admin", "/a%252fadmin", "/a%255cadmin"] {
        s.refused(target, get(&s, target).as_bytes(), 400, "bad path")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_and_backslashes_are_refused() {
    let s = Stack::plain().await;
    for target in ["/a%2fadmin", "/a%2Fadmin", "/a%5cadmin", "/a\\admin"] {
        s.refused(target, get(&s, target).as_bytes(), 400, "bad path")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semicolon_path_parameters_are_refused() {
    let s = Stack::plain().await;
    for target in [
        "/admin;jsessionid=1",
        "/a;/admin",
        "/a/%3b/admin",
        "/a/%253b/admin",
    ] {
        s.refused(target, get(&s, target).as_bytes(), 400, "bad path")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_segments_are_refused() {
    let s = Stack::plain().await;
    for target in ["//admin", "/a//admin", "/a/"] {
        if target == "/a/" {
            // A trailing slash is an ordinary path, not an empty segment in the middle.
            let r = s.send(get(&s, target).as_bytes()).await;
            assert_eq!(r.status(), Some(200), "{}", r.text);
            s.up.clear();
            continue;
        }
        s.refused(target, get(&s, target).as_bytes(), 400, "bad path")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_in_the_target_are_refused_not_truncated() {
    let s = Stack::plain().await;
    for target in ["/public#/../admin", "/public%23/admin"] {
        let r = s.send(get(&s, target).as_bytes()).await;
        if target.contains('#') {
            assert_eq!(r.status(), Some(400), "{target}: {}", r.text);
            assert!(s.up.requests().is_empty(), "{target} reached the upstream");
        } else {
            // An encoded '#' is data: forwarded exactly as sent, never decoded.
            assert_eq!(r.status(), Some(200), "{target}: {}", r.text);
            assert_eq!(s.up.requests()[0].target, target);
        }
        s.up.clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_tricks_never_change_the_path() {
    let s = Stack::plain().await;
    let target = "/public?next=/../admin&x=%2e%2e";
    let r = s.send(get(&s, target).as_bytes()).await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(
        s.up.requests()[0].target,
        target,
        "path and query forwarded as sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_naming_another_host_is_refused() {
    let s = Stack::plain().await;
    let bytes = format!(
        "GET https://other.example.test/admin HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        s.host()
    );
    s.refused("absolute form", bytes.as_bytes(), 400, "disagree")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_host_headers_are_refused() {
    let s = Stack::plain().await;
    let bytes = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nHost: other.example.test\r\nConnection: close\r\n\r\n",
        s.host()
    );
    s.refused(
        "two Host headers",
        bytes.as_bytes(),
        400,
        "more than one Host",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_naming_another_host_than_the_host_header_is_refused() {
    let s = Stack::plain().await;
    // TLS to HOST, then a Host header for another name the certificate also covers.
    let bytes = format!(
        "GET / HTTP/1.1\r\nHost: other.example.test:{}\r\nConnection: close\r\n\r\n",
        s.gw.port()
    );
    s.refused("SNI != Host", bytes.as_bytes(), 421, "TLS server name")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_no_route_serves_is_refused() {
    let s = Stack::plain().await;
    let bytes = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}.evil.test:{}\r\nConnection: close\r\n\r\n",
        s.gw.port()
    );
    // SNI is HOST, so the name mismatch is caught first.
    let r = s.send(bytes.as_bytes()).await;
    assert!(matches!(r.status(), Some(421)), "{}", r.text);
    assert!(s.up.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_dot_and_upper_case_hosts_are_one_host() {
    // Not a refusal: the spellings of one name are the same host, so the route and the
    // policy see one name, and the upstream gets the canonical one.
    let s = Stack::plain().await;
    for host in [
        format!("{HOST}.:{}", s.gw.port()),
        format!("GIT.Example.TEST:{}", s.gw.port()),
    ] {
        let bytes = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = s.send(bytes.as_bytes()).await;
        assert_eq!(r.status(), Some(200), "{host}: {}", r.text);
        let seen = s.up.requests();
        assert_eq!(
            seen[0].header("x-forwarded-host"),
            Some(format!("{HOST}:{}", s.gw.port()).as_str()),
            "{host}"
        );
        s.up.clear();
    }
}

/// A ref rule cannot be sidestepped by spelling the push endpoint another way Gogs still
/// routes to receive-pack (it percent-decodes and lower-cases the path): every spelling has
/// its commands read and the protected branch refused in git's own words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_pack_spellings_cannot_skip_the_ref_rules() {
    const POLICY: &str = "rules:
  - id: anyone-gogs
    route: gogs
    roles: [\"*\"]
  - id: protect-main
    route: gogs
    effect: deny
    roles: [\"*\"]
    git: { actions: [push], refs: [refs/heads/main] }
";
    let s = Stack::gogs_with_policy(POLICY).await;
    let (host, token) = (s.host(), s.alice.clone().expect("alice"));
    let command = format!(
        "{} {} refs/heads/main\0report-status side-band-64k\n",
        "1".repeat(40),
        "2".repeat(40)
    );
    let body = format!("{:04x}{command}0000PACK", command.len() + 4);
    for spelling in [
        "git-receive-pack",
        "git%2Dreceive-pack",
        "git%2dreceive%2Dpack",
        "GIT-RECEIVE-PACK",
        "git-receive-pack/",
    ] {
        let threat = format!("push to main as {spelling}");
        let r = s
            .send(
                format!(
                    "POST /platform/app.git/{spelling} HTTP/1.1\r\nHost: {host}\r\n\
                     Authorization: Bearer {token}\r\n\
                     Content-Type: application/x-git-receive-pack-request\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
        assert_eq!(r.status(), Some(200), "{threat}: {}", r.text);
        assert!(
            r.text.contains("ng refs/heads/main") && r.text.contains("protect-main"),
            "{threat}: {}",
            r.text
        );
        assert!(
            s.up.requests().is_empty(),
            "{threat}: reached Gogs: {:?}",
            s.up.requests()
        );
        let id = r.header("x-request-id").expect("request id");
        let records = tokio::task::block_in_place(|| s.records(&id));
        let d = records[0].decision.as_ref().expect("decision");
        assert_eq!(
            (d.effect.as_str(), d.rule.as_deref()),
            ("deny", Some("protect-main")),
            "{threat}: {records:#?}"
        );
        let action = records[0].action.as_ref().expect("action");
        assert_eq!(action.refs.len(), 1, "{threat}: {records:#?}");
    }
}
