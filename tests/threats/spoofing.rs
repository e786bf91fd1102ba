//! Speaking for someone else: identity headers in every spelling, forged forwarding headers,
//! URL overrides, and Gogs's own credentials for another user.

use crate::harness::Stack;

/// The one `x-webauth-user` value the upstream saw (there must be exactly one).
fn webauth_user(s: &Stack) -> String {
    let reqs = s.up.requests();
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    let values: Vec<&str> = reqs[0]
        .headers
        .get_all("x-webauth-user")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(values.len(), 1, "{values:?}");
    values[0].to_string()
}

/// A page request from alice with `extra` header lines.
fn page(s: &Stack, extra: &str) -> String {
    format!(
        "GET /platform/app HTTP/1.1\r\nHost: {}\r\nAccept: text/html\r\n{}{extra}Connection: close\r\n\r\n",
        s.host(),
        s.bearer()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_header_sent_in_any_case_or_twice_is_replaced_by_the_gateways() {
    let s = Stack::gogs().await;
    for extra in [
        "X-WEBAUTH-USER: admin\r\n",
        "x-webauth-user: admin\r\n",
        "X-Webauth-User: admin\r\nX-WEBAUTH-USER: root\r\n",
        "X-WEBAUTH-USER:admin\r\n",
    ] {
        let r = s.send(page(&s, extra).as_bytes()).await;
        assert_eq!(r.status(), Some(200), "{extra}: {}", r.text);
        assert_eq!(webauth_user(&s), "alice", "{extra}");
        s.up.clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_header_with_underscores_never_reaches_gogs() {
    // Some servers (and nginx with underscores_in_headers) read X_WEBAUTH_USER as
    // X-WEBAUTH-USER: any header name with `_` is removed.
    let s = Stack::gogs().await;
    let r = s
        .send(page(&s, "X_WEBAUTH_USER: admin\r\nX-WEBAUTH_USER: admin\r\n").as_bytes())
        .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let seen = &s.up.requests()[0];
    assert!(
        seen.headers.keys().all(|k| !k.as_str().contains('_')),
        "{:?}",
        seen.headers
    );
    assert_eq!(webauth_user(&s), "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_header_named_in_connection_is_still_the_gateways() {
    let s = Stack::gogs().await;
    let r = s
        .send(
            format!(
                "GET /platform/app HTTP/1.1\r\nHost: {}\r\nAccept: text/html\r\n{}X-WEBAUTH-USER: admin\r\nConnection: keep-alive, X-WEBAUTH-USER\r\n\r\n",
                s.host(),
                s.bearer()
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(webauth_user(&s), "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_header_in_request_trailers_never_reaches_gogs() {
    let s = Stack::gogs().await;
    let r = s
        .send(
            format!(
                "POST /platform/app/issues/new HTTP/1.1\r\nHost: {}\r\nAccept: text/html\r\n{}Transfer-Encoding: chunked\r\nTrailer: X-WEBAUTH-USER\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nX-WEBAUTH-USER: admin\r\n\r\n",
                s.host(),
                s.bearer()
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let seen = &s.up.requests()[0];
    assert_eq!(seen.body, b"abc");
    assert_eq!(webauth_user(&s), "alice");
    assert!(seen.headers.get("trailer").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_header_without_credentials_is_refused_and_never_forwarded() {
    let s = Stack::gogs().await;
    let bytes = format!(
        "GET /api/v1/user HTTP/1.1\r\nHost: {}\r\nX-WEBAUTH-USER: admin\r\nConnection: close\r\n\r\n",
        s.host()
    );
    let r = s
        .refused(
            "spoofed user, no credential",
            bytes.as_bytes(),
            401,
            "no credential",
        )
        .await;
    assert!(r.header("www-authenticate").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let s = Stack::gogs().await;
    let r = s
        .send(
            page(
                &s,
                "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: admin.example.test\r\nX-Forwarded-Proto: http\r\nForwarded: for=10.0.0.1;host=admin.example.test\r\nX-Real-IP: 10.0.0.1\r\nX-Client-IP: 10.0.0.1\r\nTrue-Client-IP: 10.0.0.1\r\n",
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let seen = &s.up.requests()[0];
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some(s.host().as_str()));
    for h in ["forwarded", "x-real-ip", "x-client-ip", "true-client-ip"] {
        assert!(seen.header(h).is_none(), "{h} reached the upstream");
    }
    // The audit record has the socket's address, not the claimed one.
    let id = r.header("x-request-id").unwrap();
    let records = tokio::task::block_in_place(|| s.records(&id));
    let source = records[0].source.as_ref().unwrap();
    assert!(source.addr.starts_with("127.0.0.1:"), "{source:?}");
    assert!(
        !source.trusted_proxy && source.forwarded_for.is_none(),
        "{source:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_override_headers_are_removed() {
    let s = Stack::gogs().await;
    let r = s
        .send(
            page(
                &s,
                "X-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-Override-URL: /admin\r\nX-Original-URI: /admin\r\nX-Forwarded-Uri: /admin\r\nX-Forwarded-Path: /admin\r\nX-HTTP-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nX-Method-Override: DELETE\r\nX-Original-Method: DELETE\r\n",
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let seen = &s.up.requests()[0];
    for h in [
        "x-original-url",
        "x-rewrite-url",
        "x-override-url",
        "x-original-uri",
        "x-forwarded-uri",
        "x-forwarded-path",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-method",
    ] {
        assert!(
            seen.header(h).is_none(),
            "{h} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.target, "/platform/app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gogs_session_cookie_of_another_user_is_not_forwarded() {
    // Gogs's own cookies reach it only sealed to the person who got them; a raw one copied
    // from someone else's browser is dropped.
    let s = Stack::gogs().await;
    let r = s
        .send(
            page(
                &s,
                "Cookie: i_like_gogs=0123456789abcdef; _csrf=stolen; lang=en-US\r\n",
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let seen = &s.up.requests()[0];
    let cookie = seen.header("cookie").unwrap_or("");
    assert!(
        !cookie.contains("i_like_gogs") && !cookie.contains("stolen"),
        "{cookie}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gogs_access_token_of_another_user_is_refused() {
    // Gogs API tokens are not credentials at the gateway: only JWTs from the configured
    // issuers are, so a leaked Gogs token cannot ride through it.
    let s = Stack::gogs().await;
    let bytes = format!(
        "GET /api/v1/user HTTP/1.1\r\nHost: {}\r\nAuthorization: token 0123456789abcdef0123456789abcdef01234567\r\nConnection: close\r\n\r\n",
        s.host()
    );
    s.refused("a Gogs token", bytes.as_bytes(), 401, "").await;
}
