//! What reaches the upstream: hop-by-hop removal, forwarding headers, host and path rules.
//! Requests are sent as raw bytes over TLS so nothing in a client library cleans them first.

mod support;

use support::raw::{self, exchange};
use support::{DevCa, GatewayBuilder, HOST, RecordingUpstream, Reply, TestGateway};

async fn setup(extra_server: &[&str]) -> (DevCa, RecordingUpstream, TestGateway) {
    let ca = DevCa::new();
    let up = RecordingUpstream::start(Reply::Ok).await;
    let mut b = GatewayBuilder::new().route("web", "plain", &[HOST], &up.url(), "");
    for l in extra_server {
        b = b.server(l);
    }
    let gw = b.start(&ca);
    (ca, up, gw)
}

fn req(extra: &str) -> String {
    format!("GET /hello HTTP/1.1\r\nHost: {HOST}\r\n{extra}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn hop_by_hop_and_connection_named_headers_never_reach_the_upstream() {
    let (ca, up, gw) = setup(&[]).await;
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!(
            "GET /hello HTTP/1.1\r\nHost: {HOST}\r\nConnection: keep-alive, X-Secret-Token, close\r\nX-Secret-Token: s\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eDp5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nAccept: text/plain\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    for h in [
        "x-secret-token",
        "keep-alive",
        "proxy-authorization",
        "te",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(seen[0].header(h).is_none(), "{h} reached the upstream");
    }
    assert_eq!(seen[0].header("accept"), Some("text/plain"));
}

#[tokio::test]
async fn connection_header_naming_host_or_length_is_refused() {
    let (ca, up, gw) = setup(&[]).await;
    for token in ["Host", "Content-Length", "transfer-encoding"] {
        let r = exchange(
            gw.https,
            &ca.ca(),
            HOST,
            req(&format!("Connection: {token}\r\n")).as_bytes(),
        )
        .await;
        assert_eq!(r.status(), Some(400), "{token}: {}", r.text);
        assert!(r.text.contains("Connection header names"), "{}", r.text);
    }
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let (ca, up, gw) = setup(&[]).await;
    let spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX_Forwarded_For: 6.6.6.6\r\nX-Gatehouse-User: admin\r\nX-Request-Id: chosen-by-client\r\n";
    let r = exchange(gw.https, &ca.ca(), HOST, req(spoof).as_bytes()).await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let seen = &up.requests()[0];
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header_count("x-forwarded-for"), 1);
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some(HOST));
    for h in [
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x_forwarded_for",
        "x-gatehouse-user",
    ] {
        assert!(seen.header(h).is_none(), "{h} reached the upstream");
    }
    let id = seen.header("x-request-id").unwrap();
    assert_ne!(id, "chosen-by-client");
    assert_eq!(
        r.header("x-request-id").as_deref(),
        Some(id),
        "client sees the same request id"
    );
}

#[tokio::test]
async fn a_trusted_proxy_extends_the_forwarding_chain_and_keeps_its_request_id() {
    let (ca, up, gw) = setup(&["trusted_proxies = [\"127.0.0.1/32\"]"]).await;
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        req("X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: git.example.com\r\nX-Request-Id: lb-1234\r\nX-Original-URL: /admin\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let seen = &up.requests()[0];
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-host"), Some("git.example.com"));
    assert_eq!(seen.header("x-request-id"), Some("lb-1234"));
    assert!(seen.header("x-original-url").is_none());
}

#[tokio::test]
async fn upstream_gets_its_own_host_and_the_path_unchanged() {
    let (ca, up, gw) = setup(&[]).await;
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!("GET /repo/raw/a%20b.txt?x=1&y=%2F HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let seen = &up.requests()[0];
    assert_eq!(seen.target, "/repo/raw/a%20b.txt?x=1&y=%2F");
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
}

#[tokio::test]
async fn host_spellings_are_canonical_and_disagreements_are_refused() {
    let (ca, up, gw) = setup(&[]).await;
    let port = gw.port();
    let cases: Vec<(String, u16, &str)> = vec![
        (
            "GET / HTTP/1.1\r\nHost: GIT.Example.TEST.\r\nConnection: close\r\n\r\n".to_string(),
            200,
            "case and trailing dot",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {HOST}:443\r\nConnection: close\r\n\r\n"),
            200,
            "default port",
        ),
        (
            format!(
                "GET https://{HOST}:{port}/ HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
            ),
            200,
            "absolute form agreeing",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
            400,
            "duplicate Host",
        ),
        (
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
            400,
            "missing Host",
        ),
        (
            format!(
                "GET https://other.example.test/ HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
            ),
            400,
            "absolute form disagreeing",
        ),
        (
            format!("GET http://{HOST}/ HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
            400,
            "http scheme on TLS",
        ),
        (
            "GET / HTTP/1.1\r\nHost: other.example.test\r\nConnection: close\r\n\r\n".to_string(),
            421,
            "Host disagreeing with SNI",
        ),
        (
            "GET / HTTP/1.1\r\nHost: git..example.test\r\nConnection: close\r\n\r\n".to_string(),
            400,
            "empty label",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: user@{HOST}\r\nConnection: close\r\n\r\n"),
            400,
            "userinfo",
        ),
    ];
    for (request, want, what) in &cases {
        let r = exchange(gw.https, &ca.ca(), HOST, request.as_bytes()).await;
        assert_eq!(r.status(), Some(*want), "{what}: {}", r.text);
    }
    assert_eq!(
        up.requests().len(),
        3,
        "only the three agreeing requests were forwarded"
    );
    let forwarded_hosts: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.header("x-forwarded-host").unwrap_or("").to_string())
        .collect();
    assert_eq!(
        forwarded_hosts,
        [HOST.to_string(), HOST.to_string(), format!("{HOST}:{port}")]
    );
    // A host no route serves, with a matching SNI.
    let r = exchange(
        gw.https,
        &ca.ca(),
        "other.example.test",
        b"GET / HTTP/1.1\r\nHost: other.example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), Some(421), "{}", r.text);
    assert!(r.text.contains("no route serves this host"));
}

#[tokio::test]
async fn canonical_host_is_forwarded_whatever_the_spelling() {
    let (ca, up, gw) = setup(&[]).await;
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        b"GET / HTTP/1.1\r\nHost: GIT.example.test.:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(up.requests()[0].header("x-forwarded-host"), Some(HOST));
}

#[tokio::test]
async fn ambiguous_paths_are_refused_and_never_forwarded() {
    let (ca, up, gw) = setup(&[]).await;
    let paths = [
        "/a/../b",
        "/a/./b",
        "/a/%2e%2e/b",
        "/a/%2E%2E/b",
        "/a/%252e%252e/b",
        "/a%2fb",
        "/a%2Fb",
        "/a%5cb",
        "/a%252fb",
        "/a\\b",
        "/a;param/b",
        "/a%3bb",
        "/a%00b",
        "//evil.example/x",
        "/a//b",
        "/a%zz",
        "/a/%2e/b",
    ];
    for p in paths {
        let r = exchange(
            gw.https,
            &ca.ca(),
            HOST,
            format!("GET {p} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status(), Some(400), "{p}: {}", r.text);
        assert!(r.text.contains("bad path"), "{p}: {}", r.text);
    }
    assert!(
        up.requests().is_empty(),
        "{:?}",
        up.requests().iter().map(|r| &r.target).collect::<Vec<_>>()
    );
    assert!(
        gw.metric(r#"gatehouse_requests_rejected_total{reason="path"}"#)
            >= paths.len() as f64 - 1.0
    );
}

#[tokio::test]
async fn fragments_in_the_target_are_refused_not_truncated() {
    let (ca, up, gw) = setup(&[]).await;
    let r = exchange(
        gw.https,
        &ca.ca(),
        HOST,
        format!("GET /public#/../admin HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(400), "{}", r.text);
    assert!(r.closed, "connection must be closed after a framing error");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn gateway_endpoints_are_answered_by_the_gateway() {
    let (ca, up, gw) = setup(&[]).await;
    for (path, want) in [
        ("/.gatehouse/health", 200),
        ("/.gatehouse/ready", 200),
        ("/.gatehouse/unknown", 404),
        ("/.gatehouse", 404),
    ] {
        let r = exchange(
            gw.https,
            &ca.ca(),
            HOST,
            format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status(), Some(want), "{path}: {}", r.text);
    }
    let r = exchange(gw.https, &ca.ca(), HOST, format!("POST /.gatehouse/health HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert_eq!(r.status(), Some(405), "{}", r.text);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn http2_authority_and_host_must_agree() {
    use http_body_util::{BodyExt, Empty};
    let (ca, up, gw) = setup(&[]).await;
    let send = |host: Option<&'static str>| {
        let ca = ca.ca();
        let addr = gw.https;
        async move {
            let tls = raw::connect_alpn(addr, &ca, HOST, &[b"h2"]).await;
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tls),
            )
            .await
            .expect("h2 handshake");
            tokio::spawn(conn);
            let mut req = http::Request::builder().uri(format!("https://{HOST}/h2"));
            if let Some(h) = host {
                req = req.header("host", h);
            }
            let resp = sender
                .send_request(req.body(Empty::<bytes::Bytes>::new()).unwrap())
                .await
                .expect("h2 request");
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            status
        }
    };
    assert_eq!(send(None).await, 200);
    assert_eq!(send(Some(HOST)).await, 200);
    assert_eq!(send(Some("other.example.test")).await, 400);
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|r| r.version == http::Version::HTTP_11),
        "upstream spoke HTTP/1.1"
    );
}
