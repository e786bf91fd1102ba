//! Identity end to end: a real OpenID provider (`oidc-provider` on Node), a real browser
//! (headless Chromium), real `git` with the gateway's credential helper, and the gateway
//! binary in between. Threat-named tests for each way in that must stay shut.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use support::oidc::{AUDIENCE, CI_CLIENT, OidcProvider, PASSWORD, WEB_CLIENT};
use support::raw::exchange;
use support::{
    DevCa, GatewayBuilder, GitServer, HOST, RecordingUpstream, Reply, TestGateway, git,
    run_with_timeout,
};

use support::secrets::{ALLOW_ALL, BROKER_TOKEN, LIGHTSTEP_TOKEN, Secrets};

fn get_with(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

struct Stack {
    ca: DevCa,
    provider: OidcProvider,
    _secrets: Secrets,
    up: RecordingUpstream,
    gw: TestGateway,
}

impl Stack {
    /// `git.example.test:PORT`, as a browser sends it.
    fn hp(&self) -> String {
        format!("{HOST}:{}", self.gw.port())
    }
}

async fn stack(
    provider_env: &[(&str, &str)],
    session_extra: &str,
    audiences: &[&str],
    reply: Reply,
) -> Stack {
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start_with_env(&ca, provider_env));
    let secrets = Secrets::new(&provider, ALLOW_ALL);
    let up = RecordingUpstream::start(reply).await;
    let gw = GatewayBuilder::new()
        .toml(&secrets.identity(&provider, session_extra, audiences))
        .route_with(
            "gogs",
            "gogs",
            &[HOST, "other.example.test"],
            &up.url(),
            &secrets.gogs_extra(),
        )
        .route_with(
            "lightstep",
            "otlp",
            &["otlp.example.test"],
            &up.url(),
            &secrets.otlp_extra(),
        )
        .start(&ca);
    Stack {
        ca,
        provider,
        _secrets: secrets,
        up,
        gw,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_and_gogs_sees_exactly_one_identity_header() {
    let s = stack(
        &[],
        "",
        &[AUDIENCE],
        Reply::Header("set-cookie", "i_like_gogs=gogs-session-1; Path=/; HttpOnly"),
    )
    .await;
    let start = s.gw.url("/platform/app?tab=files");
    let outcome =
        tokio::task::block_in_place(|| s.provider.browser_login(&start, "alice", PASSWORD));
    assert!(
        outcome.ok,
        "browser: {}\ngateway:\n{}\nprovider:\n{}",
        outcome.stderr,
        s.gw.log(),
        s.provider.log()
    );
    assert!(
        outcome.login_form_seen,
        "the provider's login form was not shown"
    );
    assert_eq!(
        outcome.final_url, start,
        "not returned to the page asked for"
    );
    assert_eq!(outcome.status, Some(200));

    // The upstream saw alice, once, and nothing the gateway owns.
    let seen = s.up.requests();
    let last = seen
        .iter()
        .find(|r| r.target == "/platform/app?tab=files")
        .expect("the page never reached Gogs");
    assert_eq!(last.header_count("x-webauth-user"), 1);
    assert_eq!(last.header("x-webauth-user"), Some("alice"));
    assert!(last.header("authorization").is_none());
    assert!(
        !last
            .header("cookie")
            .unwrap_or("")
            .contains("__Host-gatehouse"),
        "{:?}",
        last.header("cookie")
    );
    assert!(
        last.header("x-gatehouse-identity").is_some(),
        "no signed assertion"
    );

    // The session cookie follows the __Host- rules.
    let session = outcome
        .cookie("__Host-gatehouse")
        .expect("no session cookie");
    assert!(session.secure && session.http_only, "{session:?}");
    assert_eq!(session.same_site, "Lax");
    assert_eq!(session.path, "/");
    assert_eq!(session.domain, HOST, "a host-only cookie has no Domain");
    // Gogs's own cookie is sealed, never handed out raw.
    let sealed = outcome
        .cookie("__Host-gatehouse-g-i_like_gogs")
        .expect("Gogs cookie not sealed");
    assert!(!sealed.value.contains("gogs-session-1"));
    assert!(outcome.cookie("i_like_gogs").is_none());

    // The sealed cookie goes back to Gogs for alice as Gogs set it.
    let cookies = outcome.cookie_header();
    s.up.clear();
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/again",
            &s.hp(),
            &format!("Cookie: {cookies}; i_like_gogs=planted\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(
        s.up.requests()[0].header("cookie"),
        Some("i_like_gogs=gogs-session-1")
    );
    assert!(s.gw.metric(r#"gatehouse_oidc_logins_total{result="success"}"#) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_gogs() {
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    let outcome =
        tokio::task::block_in_place(|| s.provider.browser_login(&s.gw.url("/"), "bob", PASSWORD));
    assert!(outcome.ok, "{}", outcome.stderr);
    let cookies = outcome.cookie_header();
    s.up.clear();
    let spoof = format!(
        "Cookie: {cookies}\r\nX-WEBAUTH-USER: admin\r\nx-webauth-user: root\r\nX_WEBAUTH_USER: admin\r\nX-Webauth-User: admin\r\nConnection: X-WEBAUTH-USER\r\nX-Gatehouse-Identity: forged\r\n"
    );
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with("/", &s.hp(), &spoof).as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let seen = &s.up.requests()[0];
    let values: Vec<_> = seen.headers.get_all("x-webauth-user").iter().collect();
    assert_eq!(values, ["bob"]);
    assert!(seen.header("x_webauth_user").is_none());
    assert_ne!(seen.header("x-gatehouse-identity"), Some("forged"));

    // Trailers cannot carry it either.
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        format!("POST /x HTTP/1.1\r\nHost: {}\r\nCookie: {cookies}\r\nTransfer-Encoding: chunked\r\nTrailer: X-WEBAUTH-USER\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\nX-WEBAUTH-USER: admin\r\n\r\n", s.hp()).as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let seen = s.up.requests();
    let last = seen.last().unwrap();
    let values: Vec<_> = last.headers.get_all("x-webauth-user").iter().collect();
    assert_eq!(values, ["bob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_foreign_and_expired_session_cookies_go_back_to_login() {
    let s = stack(&[], "absolute_lifetime = \"8s\"", &[AUDIENCE], Reply::Ok).await;
    let outcome =
        tokio::task::block_in_place(|| s.provider.browser_login(&s.gw.url("/"), "alice", PASSWORD));
    assert!(outcome.ok, "{}", outcome.stderr);
    let session = outcome.cookie("__Host-gatehouse").unwrap().value.clone();
    let browser = "Accept: text/html\r\n";

    let ok = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/",
            &s.hp(),
            &format!("{browser}Cookie: __Host-gatehouse={session}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text);

    // One flipped character anywhere: back to the provider, never an error.
    let mut flipped = session.clone().into_bytes();
    let i = flipped.len() / 2;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/",
            &s.hp(),
            &format!("{browser}Cookie: __Host-gatehouse={flipped}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(302), "{}", r.text);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with(&s.provider.issuer),
        "{}",
        r.text
    );

    // The same cookie presented to another host the gateway serves.
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        "other.example.test",
        get_with(
            "/",
            &format!("other.example.test:{}", s.gw.port()),
            &format!("{browser}Cookie: __Host-gatehouse={session}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(
        r.status(),
        Some(302),
        "foreign-host cookie accepted: {}",
        r.text
    );

    // Past the absolute lifetime: back to login, and the stale cookie is cleared.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/",
            &s.hp(),
            &format!("{browser}Cookie: __Host-gatehouse={session}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(302), "{}", r.text);
    assert!(
        r.text.contains("__Host-gatehouse=; Path=/"),
        "expired session not cleared: {}",
        r.text
    );
    // An API client with the expired cookie gets 401, not a redirect.
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/api/v1/user",
            &s.hp(),
            &format!("Cookie: __Host-gatehouse={session}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(401), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_gets_the_right_challenge() {
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    let ca = s.ca.ca();
    // A browser page: sign-in redirect with PKCE S256, state and nonce.
    let r = exchange(
        s.gw.https,
        &ca,
        HOST,
        get_with("/platform/app", &s.hp(), "Accept: text/html\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(302), "{}", r.text);
    let location = r.header("location").unwrap();
    for part in [
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
        "response_type=code",
        &format!("client_id={WEB_CLIENT}"),
    ] {
        assert!(location.contains(part), "{part} missing from {location}");
    }
    assert!(
        r.text.contains("Set-Cookie: __Host-gatehouse-login-")
            || r.text
                .to_ascii_lowercase()
                .contains("set-cookie: __host-gatehouse-login-"),
        "{}",
        r.text
    );
    assert!(s.up.requests().is_empty());
    // git: Basic first, so git asks its credential helper.
    let r = exchange(
        s.gw.https,
        &ca,
        HOST,
        get_with(
            "/platform/app.git/info/refs?service=git-upload-pack",
            &s.hp(),
            "User-Agent: git/2.47.3\r\n",
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(401), "{}", r.text);
    let challenges: Vec<&str> = r
        .text
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .collect();
    assert!(
        challenges[0].contains("Basic realm=\"gatehouse\""),
        "{challenges:?}"
    );
    // An API call and an OTLP export: Bearer.
    let r = exchange(
        s.gw.https,
        &ca,
        HOST,
        get_with("/api/v1/user", &s.hp(), "Accept: application/json\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(401));
    assert!(r.text.contains("Bearer realm=\"gatehouse\""), "{}", r.text);
    let r = exchange(
        s.gw.https,
        &ca,
        "otlp.example.test",
        format!("POST /v1/traces HTTP/1.1\r\nHost: otlp.example.test:{}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", s.gw.port()).as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(401), "{}", r.text);
    assert!(
        r.text.contains("Bearer realm=\"gatehouse\"") && !r.text.contains("Basic"),
        "{}",
        r.text
    );
    assert!(
        s.up.requests().is_empty(),
        "an unauthenticated request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ci_token_reaches_lightstep_with_the_gateways_token_only() {
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    let token = tokio::task::block_in_place(|| {
        s.provider
            .client_credentials_token(CI_CLIENT, &s.provider.ci_secret, &[])
    });
    let port = s.gw.port();
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        "otlp.example.test",
        format!("POST /v1/traces HTTP/1.1\r\nHost: otlp.example.test:{port}\r\nAuthorization: Bearer {token}\r\nLightstep-Access-Token: callers-own\r\nContent-Type: application/x-protobuf\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}\n{}", r.text, s.gw.log());
    let seen = &s.up.requests()[0];
    let tokens: Vec<_> = seen
        .headers
        .get_all("lightstep-access-token")
        .iter()
        .collect();
    assert_eq!(tokens, [LIGHTSTEP_TOKEN]);
    assert!(
        seen.header("authorization").is_none(),
        "the caller's token reached Lightstep"
    );
    assert_eq!(seen.body, b"abc");
    // A second request is served from the verified-token cache.
    let again = exchange(
        s.gw.https,
        &s.ca.ca(),
        "otlp.example.test",
        format!("POST /v1/traces HTTP/1.1\r\nHost: otlp.example.test:{port}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(again.status(), Some(200));
    assert!(s.gw.metric(r#"gatehouse_token_cache_total{result="hit"}"#) >= 1.0);
    assert!(
        !s.gw.log().contains(LIGHTSTEP_TOKEN) && !s.gw.log().contains(&token),
        "a secret reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_tokens_and_malformed_credentials_are_refused() {
    // The web client's id is listed as an audience too, so only the ID-token markers stop
    // an ID token here.
    let s = stack(&[], "", &[AUDIENCE, WEB_CLIENT], Reply::Ok).await;
    // A real ID token: authorization code flow for the web client, code exchanged here.
    let verifier = "gatehouse-test-verifier-0123456789-abcdefghijklmnop";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()),
    );
    let redirect = format!("https://{HOST}:{}/.gatehouse/oidc/callback", s.gw.port());
    let url = s.provider.authorize_url(
        &redirect,
        "openid profile groups",
        "st-1",
        "nonce-1",
        &challenge,
        &[],
    );
    let outcome = tokio::task::block_in_place(|| s.provider.browser_login(&url, "alice", PASSWORD));
    let code = outcome
        .final_url
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("code="))
        .unwrap_or_else(|| panic!("no code in {}", outcome.final_url))
        .to_string();
    let tokens =
        tokio::task::block_in_place(|| s.provider.exchange_code(&code, &redirect, verifier))
            .expect("code exchange");
    let id_token = tokens.id_token.expect("no ID token");
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/api/v1/user",
            &s.hp(),
            &format!("Authorization: Bearer {id_token}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(401), "{}", r.text);
    assert!(r.text.contains("ID tokens are not accepted"), "{}", r.text);
    // A valid provider token for another API.
    let other = tokio::task::block_in_place(|| {
        s.provider.client_credentials_token(
            CI_CLIENT,
            &s.provider.ci_secret,
            &[("resource", "urn:audience:another-api")],
        )
    });
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/api/v1/user",
            &s.hp(),
            &format!("Authorization: Bearer {other}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(401), "{}", r.text);
    assert!(r.text.contains("audience is not accepted"), "{}", r.text);
    // Tokens signed with the provider's other keys (ES256, EdDSA) are fine.
    for alg in ["ES256", "EdDSA"] {
        let t = tokio::task::block_in_place(|| {
            s.provider.client_credentials_token(
                CI_CLIENT,
                &s.provider.ci_secret,
                &[("resource", &format!("urn:gatehouse:alg:{alg}"))],
            )
        });
        let r = exchange(
            s.gw.https,
            &s.ca.ca(),
            HOST,
            get_with(
                "/api/v1/user",
                &s.hp(),
                &format!("Authorization: Bearer {t}\r\n"),
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status(), Some(200), "{alg}: {}", r.text);
    }
    let upstream_before = s.up.requests().len();
    // Garbage in every credential form.
    for auth in [
        "Bearer",
        "Bearer ",
        "Bearer a.b.c",
        "Basic !!!",
        "Basic Z2F0ZWhvdXNl",
        "Negotiate abc",
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    ] {
        let r = exchange(
            s.gw.https,
            &s.ca.ca(),
            HOST,
            get_with(
                "/api/v1/user",
                &s.hp(),
                &format!("Authorization: {auth}\r\n"),
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status(), Some(401), "{auth}: {}", r.text);
    }
    assert_eq!(
        s.up.requests().len(),
        upstream_before,
        "a refused credential reached the upstream"
    );
    assert!(s.gw.metric(r#"gatehouse_auth_rejected_total{reason="id_token"}"#) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_needs_the_csrf_token_and_ends_the_provider_session() {
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    let outcome =
        tokio::task::block_in_place(|| s.provider.browser_login(&s.gw.url("/"), "carol", PASSWORD));
    assert!(outcome.ok, "{}", outcome.stderr);
    let cookies = outcome.cookie_header();
    let page = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/.gatehouse/logout",
            &s.hp(),
            &format!("Cookie: {cookies}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(page.status(), Some(200));
    let csrf = page
        .text
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("no CSRF token in the page")
        .to_string();
    let post = |body: String, origin: &str| {
        format!(
            "POST /.gatehouse/logout HTTP/1.1\r\nHost: {}\r\nCookie: {cookies}\r\nOrigin: {origin}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            s.hp(),
            body.len()
        )
    };
    let own = format!("https://{HOST}:{}", s.gw.port());
    // Without the token, with a wrong one, or from another origin: refused.
    for (body, origin) in [
        ("".to_string(), own.as_str()),
        ("csrf=forged".to_string(), own.as_str()),
        (format!("csrf={csrf}"), "https://evil.example"),
    ] {
        let r = exchange(
            s.gw.https,
            &s.ca.ca(),
            HOST,
            post(body.clone(), origin).as_bytes(),
        )
        .await;
        assert_eq!(r.status(), Some(403), "{body} from {origin}: {}", r.text);
    }
    // A GET never signs out.
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/.gatehouse/logout?csrf=x",
            &s.hp(),
            &format!("Cookie: {cookies}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert!(!r.text.contains("Max-Age=0"), "GET cleared the session");
    // With it: cookies cleared and off to the provider's end-session endpoint.
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        post(format!("csrf={csrf}"), &own).as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(303), "{}", r.text);
    let location = r.header("location").unwrap();
    assert!(location.starts_with(&s.provider.issuer), "{location}");
    assert!(
        location.contains("id_token_hint=") && location.contains("post_logout_redirect_uri="),
        "{location}"
    );
    assert!(r.text.contains("__Host-gatehouse=; Path=/"), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_state_must_be_present_bound_and_fresh() {
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    let ca = s.ca.ca();
    let callback = |query: &str, cookie: &str| {
        get_with(
            &format!("/.gatehouse/oidc/callback?{query}"),
            &s.hp(),
            &if cookie.is_empty() {
                String::new()
            } else {
                format!("Cookie: {cookie}\r\n")
            },
        )
    };
    // Missing state.
    let r = exchange(s.gw.https, &ca, HOST, callback("code=abc", "").as_bytes()).await;
    assert_eq!(r.status(), Some(400), "{}", r.text);
    assert!(r.text.contains("sign-in link is not valid"));
    // A state with no pre-login cookie (a link sent by someone else: login CSRF).
    let r = exchange(
        s.gw.https,
        &ca,
        HOST,
        callback("code=abc&state=attackerstate12345", "").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(400));
    // A real pre-login cookie, but another login's state.
    let start = exchange(
        s.gw.https,
        &ca,
        HOST,
        get_with("/", &s.hp(), "Accept: text/html\r\n").as_bytes(),
    )
    .await;
    let set_cookie = start
        .text
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: __host-gatehouse-login-")
        })
        .unwrap();
    let pair = set_cookie
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (name, _) = pair.split_once('=').unwrap();
    let foreign_state = format!("{}zz", &name["__Host-gatehouse-login-".len()..]);
    let r = exchange(
        s.gw.https,
        &ca,
        HOST,
        callback(&format!("code=abc&state={foreign_state}"), &pair).as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(400), "{}", r.text);
    assert!(s.up.requests().is_empty());
    assert!(s.gw.metric(r#"gatehouse_oidc_logins_total{result="state"}"#) >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_return_address_is_kept_on_site() {
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    for evil in [
        "//evil.example/x",
        "/\\evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
    ] {
        let url = format!(
            "{}?return_to={}",
            s.gw.url("/.gatehouse/oidc/login"),
            support::oidc::form_encode(evil)
        );
        let outcome =
            tokio::task::block_in_place(|| s.provider.browser_login(&url, "alice", PASSWORD));
        assert!(outcome.ok, "{evil}: {}", outcome.stderr);
        assert_eq!(
            outcome.final_url,
            s.gw.url("/"),
            "{evil} led to {}",
            outcome.final_url
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_refresh_silently_before_the_provider_tokens_expire() {
    // ID tokens live 20 s; the gateway refreshes when 15 s or less remain.
    let s = stack(
        &[("OIDC_ID_TOKEN_TTL", "20")],
        "refresh_before = \"15s\"",
        &[AUDIENCE],
        Reply::Ok,
    )
    .await;
    let outcome =
        tokio::task::block_in_place(|| s.provider.browser_login(&s.gw.url("/"), "bob", PASSWORD));
    assert!(outcome.ok, "{}", outcome.stderr);
    let cookies = outcome.cookie_header();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with("/", &s.hp(), &format!("Cookie: {cookies}\r\n")).as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}\n{}", r.text, s.gw.log());
    assert!(
        r.text.contains("__Host-gatehouse="),
        "no refreshed session cookie: {}",
        r.text
    );
    assert_eq!(
        s.gw.metric(r#"gatehouse_session_refresh_total{result="success"}"#),
        1.0,
        "{}",
        s.gw.log()
    );
    assert_eq!(
        s.up.requests().last().unwrap().header("x-webauth-user"),
        Some("bob")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_provider_down_cached_keys_keep_verifying_and_sign_in_says_why() {
    let mut s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    let ci = |p: &OidcProvider| p.client_credentials_token(CI_CLIENT, &p.ci_secret, &[]);
    let first = tokio::task::block_in_place(|| ci(&s.provider));
    let second = tokio::task::block_in_place(|| ci(&s.provider));
    let port = s.gw.port();
    let post = |token: &str| {
        format!(
            "POST /v1/traces HTTP/1.1\r\nHost: otlp.example.test:{port}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        "otlp.example.test",
        post(&first).as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    tokio::task::block_in_place(|| s.provider.stop());
    // A token the gateway has never seen verifies with the keys it holds.
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        "otlp.example.test",
        post(&second).as_bytes(),
    )
    .await;
    assert_eq!(
        r.status(),
        Some(200),
        "verification failed with the provider down: {}",
        r.text
    );
    // Signing in needs the provider: a clear 503 page, not an error.
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with("/", &s.hp(), "Accept: text/html\r\n").as_bytes(),
    )
    .await;
    let status = r.status();
    // Discovery happened at start, so the redirect may still be issued (the browser then meets
    // the provider's absence); a fresh gateway answers 503.
    assert!(matches!(status, Some(302) | Some(503)), "{}", r.text);
    let fresh = GatewayBuilder::new()
        .toml(&s._secrets.identity(&s.provider, "", &[AUDIENCE]))
        .route_with(
            "gogs",
            "gogs",
            &[HOST],
            &s.up.url(),
            &s._secrets.gogs_extra(),
        )
        .route_with(
            "lightstep",
            "otlp",
            &["otlp.example.test"],
            &s.up.url(),
            &s._secrets.otlp_extra(),
        )
        .start(&s.ca);
    let r = exchange(
        fresh.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/",
            &format!("{HOST}:{}", fresh.port()),
            "Accept: text/html\r\n",
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(503), "{}", r.text);
    assert!(
        r.text.contains("identity provider cannot be reached"),
        "{}",
        r.text
    );
    // ... and a token it has no keys for is refused with 503, not accepted.
    let fresh_port = fresh.port();
    let r = exchange(
        fresh.https,
        &s.ca.ca(),
        "otlp.example.test",
        format!("POST /v1/traces HTTP/1.1\r\nHost: otlp.example.test:{fresh_port}\r\nAuthorization: Bearer {second}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(503), "{}", r.text);
    assert!(
        s.up.requests().len() == 2,
        "a request reached the upstream unverified"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_storm_fetches_the_jwks_at_most_once() {
    use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256};
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    // Let the start-up fetch happen first.
    let token = tokio::task::block_in_place(|| {
        s.provider
            .client_credentials_token(CI_CLIENT, &s.provider.ci_secret, &[])
    });
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/api/v1/user",
            &s.hp(),
            &format!("Authorization: Bearer {token}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let jwks_fetches = |log: &str| log.lines().filter(|l| l.contains(" GET /jwks ")).count();
    let before = jwks_fetches(&s.provider.log());
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for i in 0..20 {
        let header = format!(r#"{{"alg":"RS256","typ":"at+jwt","kid":"storm-{i}"}}"#);
        let claims = format!(
            r#"{{"iss":"{}","aud":"gatehouse","sub":"x","exp":{}}}"#,
            s.provider.issuer,
            now + 300
        );
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let mut sig = vec![0u8; key.public_modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .unwrap();
        let _ = key.public_key();
        let forged = format!("{input}.{}", b64(&sig));
        let r = exchange(
            s.gw.https,
            &s.ca.ca(),
            HOST,
            get_with(
                "/api/v1/user",
                &s.hp(),
                &format!("Authorization: Bearer {forged}\r\n"),
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status(), Some(401), "{}", r.text);
        assert!(r.text.contains("signing key is unknown"), "{}", r.text);
    }
    let after = jwks_fetches(&s.provider.log());
    assert!(
        after - before <= 1,
        "{} JWKS fetches for 20 unknown kids",
        after - before
    );
    assert!(s.gw.metric(r#"gatehouse_auth_rejected_total{reason="unknown_kid"}"#) >= 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_state_is_used_once_and_a_code_from_another_sign_in_is_refused() {
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    let ca = s.ca.ca();
    // Start two sign-ins at the gateway, keeping each pre-login cookie.
    let begin = || async {
        let r = exchange(
            s.gw.https,
            &ca,
            HOST,
            get_with("/.gatehouse/oidc/login", &s.hp(), "").as_bytes(),
        )
        .await;
        assert_eq!(r.status(), Some(302), "{}", r.text);
        let cookie = r
            .text
            .lines()
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with("set-cookie: __host-gatehouse-login-")
            })
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().split(';').next().unwrap_or("").to_string())
            .expect("no pre-login cookie");
        (r.header("location").unwrap(), cookie)
    };
    let (authorize_a, cookie_a) = begin().await;
    let (authorize_b, _cookie_b) = begin().await;
    // The person signs in at the provider; the browser (without the pre-login cookie) lands on
    // the callback, which fails there; its URL carries the code and state.
    let code_url = |authorize: String| {
        let outcome =
            tokio::task::block_in_place(|| s.provider.browser_login(&authorize, "alice", PASSWORD));
        assert!(
            outcome.final_url.contains("/.gatehouse/oidc/callback?"),
            "{}",
            outcome.final_url
        );
        outcome.final_url
    };
    let callback_a = code_url(authorize_a);
    let callback_b = code_url(authorize_b);
    let path = |url: &str| url[url.find("/.gatehouse").unwrap()..].to_string();
    let params_b = support::oidc::query_params(&callback_b);
    let params_a = support::oidc::query_params(&callback_a);

    // Login A's state and cookie with login B's code: B's code is bound to B's PKCE verifier
    // and nonce, so it cannot complete A.
    let mixed = format!(
        "/.gatehouse/oidc/callback?code={}&state={}&iss={}",
        params_b["code"],
        params_a["state"],
        support::oidc::form_encode(&s.provider.issuer)
    );
    let r = exchange(
        s.gw.https,
        &ca,
        HOST,
        get_with(&mixed, &s.hp(), &format!("Cookie: {cookie_a}\r\n")).as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(400), "{}", r.text);
    assert!(
        !r.text
            .to_ascii_lowercase()
            .contains("set-cookie: __host-gatehouse="),
        "a session was issued: {}",
        r.text
    );

    // Login A's own callback was spent by the mixed attempt (state is single-use).
    let r = exchange(
        s.gw.https,
        &ca,
        HOST,
        get_with(
            &path(&callback_a),
            &s.hp(),
            &format!("Cookie: {cookie_a}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(
        r.status(),
        Some(400),
        "a used state was accepted again: {}",
        r.text
    );
    assert!(r.text.contains("sign-in link is not valid"), "{}", r.text);
}

/// `gatehouse login` (device grant, completed in the browser) and then `git clone` through the
/// gateway with `gatehouse git-credential` as git's credential helper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clone_works_with_the_credential_helper_after_a_device_login() {
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    let secrets = Secrets::new(&provider, ALLOW_ALL);
    let repos = tempfile::tempdir().unwrap();
    let server = GitServer::start(repos.path()).await;
    server.create_repo("platform/app.git");
    let gw = GatewayBuilder::new()
        .toml(&secrets.identity(&provider, "", &[AUDIENCE]))
        .route_with(
            "gogs",
            "gogs",
            &["localhost"],
            &server.url(),
            &secrets.gogs_extra(),
        )
        .route_with(
            "lightstep",
            "otlp",
            &["otlp.example.test"],
            "http://127.0.0.1:9",
            &secrets.otlp_extra(),
        )
        .start(&ca);
    let home = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_gatehouse");
    // "localhost" resolves everywhere, so the CLI and git need no resolver overrides.
    let gateway_url = format!("https://localhost:{}", gw.port());
    let repo_url = format!("{gateway_url}/platform/app.git");

    // Without signing in, git is refused and asks for credentials it cannot get.
    let work = tempfile::tempdir().unwrap();
    let helper = format!("!{bin} git-credential");
    let clone = |dest: &Path| {
        let mut cmd = git(
            &ca,
            work.path(),
            gw.port(),
            &[
                "-c",
                &format!("credential.helper={helper}"),
                "clone",
                "--quiet",
                &repo_url,
                dest.to_str().unwrap(),
            ],
        );
        cmd.env("XDG_CONFIG_HOME", home.path())
            .env("HOME", home.path());
        cmd
    };
    let (ok, _, err) = tokio::task::block_in_place(|| {
        run_with_timeout(&mut clone(&work.path().join("refused")), 60)
    });
    assert!(!ok, "clone succeeded without signing in");
    assert!(
        err.contains("401")
            || err.contains("Authentication failed")
            || err.contains("could not read Username"),
        "{err}"
    );

    // gatehouse login: print the URL, wait for the person, store the tokens.
    let mut login = Command::new(bin);
    login
        .args(["login", "--gateway", &gateway_url])
        .env("XDG_CONFIG_HOME", home.path())
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ca.apply_env(&mut login);
    let mut child = login.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let url = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(url) = line.trim().strip_prefix("Open ") {
                return Some(url.to_string());
            }
            line.clear();
        }
        None
    })
    .await
    .unwrap();
    let Some(url) = url else {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "gatehouse login printed no URL: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let grant = support::oidc::DeviceGrant {
        client_id: "gatehouse-cli".into(),
        device_code: String::new(),
        user_code: String::new(),
        verification_uri: url.clone(),
        verification_uri_complete: url,
        expires_in: 0,
    };
    tokio::task::block_in_place(|| provider.device_complete(&grant, "alice", PASSWORD))
        .expect("device login in the browser");
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "gatehouse login failed");
    let stored = home.path().join("gatehouse/credentials.json");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // Now git clones, with the helper answering for the gateway.
    let (ok, out, err) =
        tokio::task::block_in_place(|| run_with_timeout(&mut clone(&work.path().join("app")), 60));
    assert!(ok, "clone failed: {out}{err}\n{}", gw.log());
    // Git reached the server with the broker's credential, never alice's token.
    let seen = server.requests();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("gatehouse-broker:{BROKER_TOKEN}"))
    );
    assert!(
        seen.iter().all(
            |(_, h)| h.get("authorization").and_then(|v| v.to_str().ok())
                == Some(expected.as_str())
        ),
        "git server saw other credentials"
    );
    assert!(gw.metric(r#"gatehouse_auth_total{method="basic"}"#) >= 1.0);
}

/// Starts a sign-in at the gateway: (the provider's authorization URL, the pre-login cookie
/// as `name=value`).
async fn begin_sign_in(s: &Stack) -> (String, String) {
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with("/.gatehouse/oidc/login", &s.hp(), "").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(302), "{}", r.text);
    let cookie = set_cookies(&r)
        .into_iter()
        .find(|c| c.starts_with("__Host-gatehouse-login-"))
        .and_then(|c| c.split(';').next().map(str::to_string))
        .unwrap_or_else(|| panic!("no pre-login cookie: {}", r.text));
    let location = r
        .header("location")
        .unwrap_or_else(|| panic!("no Location: {}", r.text));
    (location, cookie)
}

/// Every `Set-Cookie` value of a response, as sent.
fn set_cookies(r: &support::raw::Response) -> Vec<String> {
    r.text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().to_string())
        })
        .collect()
}

/// Signs in at the provider in the browser (which has no pre-login cookie, so the gateway's
/// callback refuses it there, spending nothing) and returns the callback URL the provider
/// sent the browser to: it carries the authorization code, the state and `iss`.
fn provider_callback(s: &Stack, authorize: &str, user: &str) -> String {
    let outcome = s.provider.browser_login(authorize, user, PASSWORD);
    assert!(
        outcome.final_url.contains("/.gatehouse/oidc/callback?"),
        "{}\n{}\nprovider:\n{}",
        outcome.final_url,
        outcome.stderr,
        s.provider.log()
    );
    outcome.final_url
}

/// The audit records of the request a raw response answered (by its `X-Request-Id`).
fn audit_of_response(s: &Stack, r: &support::raw::Response) -> Vec<gatehouse::audit::Record> {
    let id = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-Id: {}", r.text));
    tokio::task::block_in_place(|| s.gw.audit_of(&id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_nonce_at_the_callback_is_refused_and_recorded() {
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    let (authorize, cookie) = begin_sign_in(&s).await;
    let a = support::oidc::query_params(&authorize);
    assert!(a.contains_key("nonce"), "{authorize}");
    // The provider is asked with sign-in A's state, PKCE challenge and redirect URI, but a
    // nonce the gateway never issued: the code is valid and A's verifier redeems it, yet the
    // ID token it yields names the wrong nonce.
    let mut extra: Vec<(&str, &str)> = Vec::new();
    if let Some(prompt) = a.get("prompt") {
        extra.push(("prompt", prompt));
    }
    let forged = s.provider.authorize_url(
        &a["redirect_uri"],
        &a["scope"],
        &a["state"],
        "nonce-the-gateway-never-issued",
        &a["code_challenge"],
        &extra,
    );
    let callback = tokio::task::block_in_place(|| provider_callback(&s, &forged, "alice"));
    let params = support::oidc::query_params(&callback);
    assert_eq!(params["state"], a["state"]);
    let path = &callback[callback.find("/.gatehouse").unwrap_or(0)..];
    let before =
        s.gw.metric(r#"gatehouse_oidc_logins_total{result="token"}"#);
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(path, &s.hp(), &format!("Cookie: {cookie}\r\n")).as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(400), "{}\n{}", r.text, s.gw.log());
    assert!(r.text.to_ascii_lowercase().contains("nonce"), "{}", r.text);
    assert!(
        !set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("__Host-gatehouse=") && !c.contains("Max-Age=0")),
        "a session was issued: {}",
        r.text
    );
    assert!(s.up.requests().is_empty(), "something reached the upstream");
    assert_eq!(
        s.gw.metric(r#"gatehouse_oidc_logins_total{result="token"}"#),
        before + 1.0
    );
    let records = audit_of_response(&s, &r);
    let failure = records
        .iter()
        .find(|rec| rec.kind == "login_failure")
        .unwrap_or_else(|| panic!("no login_failure record: {records:?}"));
    assert_eq!(failure.status, Some(400));
    let decision = failure.decision.as_ref().expect("no decision");
    assert_eq!(decision.effect, "deny");
    assert!(
        decision.reasons.iter().any(|r| r.contains("nonce")),
        "{decision:?}"
    );
    assert!(
        !records.iter().any(|rec| rec.kind == "login"),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_with_a_foreign_or_missing_iss_is_refused() {
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    // The test provider advertises RFC 9207, so a callback without `iss` is as suspect as one
    // naming another issuer.
    assert_eq!(
        s.provider.discovery()["authorization_response_iss_parameter_supported"].as_bool(),
        Some(true),
        "{:?}",
        s.provider.discovery()
    );
    let metric = r#"gatehouse_oidc_logins_total{result="issuer"}"#;
    for (case, iss) in [
        ("foreign iss", Some("https://evil.example")),
        ("missing iss", None),
    ] {
        // A real sign-in with a real code: only `iss` is changed on its way back.
        let (authorize, cookie) = begin_sign_in(&s).await;
        let callback = tokio::task::block_in_place(|| provider_callback(&s, &authorize, "bob"));
        let params = support::oidc::query_params(&callback);
        assert_eq!(
            params.get("iss").map(String::as_str),
            Some(s.provider.issuer.as_str()),
            "{callback}"
        );
        let mut query = format!(
            "code={}&state={}",
            support::oidc::form_encode(&params["code"]),
            support::oidc::form_encode(&params["state"])
        );
        if let Some(iss) = iss {
            query.push_str(&format!("&iss={}", support::oidc::form_encode(iss)));
        }
        let before = s.gw.metric(metric);
        let r = exchange(
            s.gw.https,
            &s.ca.ca(),
            HOST,
            get_with(
                &format!("/.gatehouse/oidc/callback?{query}"),
                &s.hp(),
                &format!("Cookie: {cookie}\r\n"),
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status(), Some(400), "{case}: {}", r.text);
        assert!(r.text.contains("iss mismatch"), "{case}: {}", r.text);
        assert!(
            !set_cookies(&r)
                .iter()
                .any(|c| c.starts_with("__Host-gatehouse=") && !c.contains("Max-Age=0")),
            "{case}: a session was issued: {}",
            r.text
        );
        assert_eq!(s.gw.metric(metric), before + 1.0, "{case}");
        let records = audit_of_response(&s, &r);
        assert!(
            records.iter().any(|rec| rec.kind == "login_failure"
                && rec.status == Some(400)
                && rec
                    .decision
                    .as_ref()
                    .is_some_and(|d| d.reasons.iter().any(|x| x.contains("iss mismatch")))),
            "{case}: {records:?}"
        );
    }
    assert!(s.up.requests().is_empty(), "something reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_username_gogs_would_not_accept_gets_403_on_record_and_nothing_upstream() {
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    // mallory's username claim is `Mallory<script>` (tests/oidc/provider.mjs).
    let outcome = tokio::task::block_in_place(|| {
        s.provider
            .browser_login(&s.gw.url("/"), "mallory", PASSWORD)
    });
    assert!(outcome.ok, "{}\n{}", outcome.stderr, s.gw.log());
    assert!(
        outcome.cookie("__Host-gatehouse").is_some(),
        "not signed in"
    );
    // Signing in worked; the Gogs page the browser came back to did not.
    assert_eq!(outcome.status, Some(403), "{}", outcome.body);
    let cookies = outcome.cookie_header();
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/platform/app",
            &s.hp(),
            &format!("Accept: text/html\r\nCookie: {cookies}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert!(
        r.text.contains("characters Gogs does not allow"),
        "{}",
        r.text
    );
    assert!(
        s.up.requests().is_empty(),
        "a request reached Gogs: {:?}",
        s.up.requests()
    );
    let records = audit_of_response(&s, &r);
    let request = records
        .iter()
        .find(|rec| rec.kind == "request")
        .unwrap_or_else(|| panic!("no request record: {records:?}"));
    assert_eq!(
        request
            .identity
            .as_ref()
            .and_then(|i| i.username.as_deref()),
        Some("Mallory<script>")
    );
    // The policy allowed it, the gateway refused it before forwarding anything: on record as
    // deny, keeping the rule, with the refusal as the first reason (docs/audit.md).
    let decision = request.decision.as_ref().expect("no decision");
    assert_eq!(decision.effect, "deny", "{records:?}");
    assert_eq!(decision.rule.as_deref(), Some("anyone-gogs"));
    assert!(
        decision
            .reasons
            .first()
            .is_some_and(|x| x.contains("characters Gogs does not allow")),
        "{decision:?}"
    );
    assert_eq!(request.status, Some(403), "{records:?}");
    assert!(
        !records.iter().any(|rec| rec.kind == "outcome"),
        "an outcome implies something was forwarded: {records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_can_verify_the_identity_assertion_with_the_published_jwks() {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    // The key, as any upstream would fetch it: from the gateway, no credentials needed.
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with("/.gatehouse/jwks.json", &s.hp(), "").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/jwk-set+json")),
        "{}",
        r.text
    );
    let body = r.text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let jwks: JwkSet =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("JWKS does not parse ({e}): {body}"));
    assert_eq!(jwks.keys.len(), 1, "{body}");
    assert!(
        !body.contains("\"d\""),
        "the JWKS publishes private key material: {body}"
    );
    let key = DecodingKey::from_jwk(&jwks.keys[0]).expect("JWK to key");
    let validation = |aud: &str| {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&[aud]);
        v.set_issuer(&["gatehouse"]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v
    };

    // A person signed in with the browser asks for a Gogs page.
    let outcome =
        tokio::task::block_in_place(|| s.provider.browser_login(&s.gw.url("/"), "bob", PASSWORD));
    assert!(outcome.ok, "{}", outcome.stderr);
    let seen = s.up.requests();
    let page = seen.last().expect("the page never reached Gogs");
    let token = page
        .header("x-gatehouse-identity")
        .expect("no X-Gatehouse-Identity upstream");
    assert_eq!(page.header_count("x-gatehouse-identity"), 1);
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation("gogs"))
        .unwrap_or_else(|e| panic!("the assertion Gogs got does not verify: {e}"));
    assert_eq!(data.header.alg, Algorithm::EdDSA);
    assert_eq!(
        data.header.kid.as_deref(),
        jwks.keys[0].common.key_id.as_deref()
    );
    let c = &data.claims;
    assert_eq!(c["sub"], "bob");
    assert_eq!(c["preferred_username"], "bob");
    assert_eq!(c["idp"], s.provider.issuer.as_str());
    assert_eq!(c["groups"], serde_json::json!(["sre", "engineering"]));
    assert_eq!(c["amr"], serde_json::json!(["session"]));
    assert_eq!(
        c["jti"].as_str(),
        page.header("x-request-id"),
        "the assertion names another request"
    );
    let (iat, exp) = (
        c["iat"].as_u64().unwrap_or(0),
        c["exp"].as_u64().unwrap_or(0),
    );
    assert!(exp > iat && exp - iat <= 300, "not short-lived: {c}");
    // Meant for Gogs only: another route's audience refuses it, and one changed byte in the
    // payload breaks the signature.
    assert!(
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation("lightstep")).is_err()
    );
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let mut forged = c.clone();
    forged["sub"] = serde_json::json!("admin");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged.to_string()),
        parts[2]
    );
    assert!(
        jsonwebtoken::decode::<serde_json::Value>(&forged, &key, &validation("gogs")).is_err(),
        "a forged assertion verified"
    );

    // A machine with a bearer token on Gogs's API: the same key verifies its assertion.
    let ci = tokio::task::block_in_place(|| {
        s.provider
            .client_credentials_token(CI_CLIENT, &s.provider.ci_secret, &[])
    });
    s.up.clear();
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/api/v1/user",
            &s.hp(),
            &format!("Authorization: Bearer {ci}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let seen = s.up.requests();
    let token = seen
        .first()
        .and_then(|r| r.header("x-gatehouse-identity"))
        .expect("no assertion on the API request");
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation("gogs"))
        .unwrap_or_else(|e| panic!("the API request's assertion does not verify: {e}"));
    assert_eq!(data.claims["amr"], serde_json::json!(["bearer"]));
    assert_eq!(data.claims["client_id"], CI_CLIENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gogs_sign_in_and_sign_out_are_the_gateways_and_sign_out_ends_the_gogs_session() {
    let s = stack(
        &[],
        "",
        &[AUDIENCE],
        Reply::Header("set-cookie", "i_like_gogs=gogs-session-7; Path=/; HttpOnly"),
    )
    .await;
    let outcome =
        tokio::task::block_in_place(|| s.provider.browser_login(&s.gw.url("/"), "alice", PASSWORD));
    assert!(outcome.ok, "{}", outcome.stderr);
    let sealed = outcome
        .cookie("__Host-gatehouse-g-i_like_gogs")
        .expect("Gogs cookie not sealed");
    assert!(!sealed.value.contains("gogs-session-7"));
    let cookies = outcome.cookie_header();
    s.up.clear();

    // Gogs's own sign-in and sign-out pages, by GET and by POST: answered by the gateway.
    for (method, path, status, location) in [
        ("GET", "/user/login", 302, "/"),
        ("POST", "/user/login", 303, "/"),
        ("GET", "/user/sign_up", 302, "/"),
        ("GET", "/user/logout", 302, "/.gatehouse/logout"),
        ("POST", "/user/logout", 303, "/.gatehouse/logout"),
    ] {
        let r = exchange(
            s.gw.https,
            &s.ca.ca(),
            HOST,
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/html\r\nCookie: {cookies}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                s.hp()
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status(), Some(status), "{method} {path}: {}", r.text);
        assert_eq!(
            r.header("location").as_deref(),
            Some(location),
            "{method} {path}: {}",
            r.text
        );
    }
    assert!(
        s.up.requests().is_empty(),
        "Gogs saw its sign-in or sign-out page: {:?}",
        s.up.requests()
    );

    // Signing out of the gateway deletes the sealed Gogs cookie too.
    let page = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/.gatehouse/logout",
            &s.hp(),
            &format!("Cookie: {cookies}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(page.status(), Some(200), "{}", page.text);
    let csrf = page
        .text
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("no CSRF token in the page")
        .to_string();
    let body = format!("csrf={csrf}");
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        format!(
            "POST /.gatehouse/logout HTTP/1.1\r\nHost: {}\r\nCookie: {cookies}\r\nOrigin: https://{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            s.hp(),
            s.hp(),
            body.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(303), "{}", r.text);
    let set = set_cookies(&r);
    let deleted = |name: &str| {
        set.iter().any(|c| {
            c.starts_with(&format!("{name}=;"))
                && c.contains("Max-Age=0")
                && c.contains("Path=/")
                && c.contains("Secure")
        })
    };
    assert!(
        deleted("__Host-gatehouse-g-i_like_gogs"),
        "the sealed Gogs cookie is not cleared: {set:?}"
    );
    assert!(
        deleted("__Host-gatehouse"),
        "the session is not cleared: {set:?}"
    );
    assert!(
        s.up.requests().is_empty(),
        "sign-out reached Gogs: {:?}",
        s.up.requests()
    );
    // What the browser keeps afterwards (nothing of the gateway's) is signed out.
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with("/user/login", &s.hp(), "Accept: text/html\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(302), "{}", r.text);
    assert!(
        r.header("location")
            .is_some_and(|l| l.starts_with(&s.provider.issuer)),
        "{}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_jwt_issuer_accepts_only_its_own_audience() {
    // Two real providers: the company IdP (audience `gatehouse`) and a CI system's issuer
    // (audience `ci-gateway`). Each can mint tokens for either audience.
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    let ci_issuer = tokio::task::block_in_place(|| OidcProvider::start(&s.ca));
    let second = format!(
        "[[identity.jwt]]\nissuer = {:?}\naudiences = [\"ci-gateway\"]\nca_file = {:?}\n",
        ci_issuer.issuer,
        ci_issuer.ca_file.display().to_string()
    );
    let gw = GatewayBuilder::new()
        .toml(&s._secrets.identity(&s.provider, "", &[AUDIENCE]))
        .toml(&second)
        .route_with(
            "gogs",
            "gogs",
            &[HOST],
            &s.up.url(),
            &s._secrets.gogs_extra(),
        )
        .route_with(
            "lightstep",
            "otlp",
            &["otlp.example.test"],
            &s.up.url(),
            &s._secrets.otlp_extra(),
        )
        .start(&s.ca);
    let mint = |p: &OidcProvider, resource: Option<&str>| {
        let extra: Vec<(&str, &str)> = resource.map(|r| ("resource", r)).into_iter().collect();
        tokio::task::block_in_place(|| p.client_credentials_token(CI_CLIENT, &p.ci_secret, &extra))
    };
    let for_ci = Some("urn:audience:ci-gateway");
    let cases = [
        (
            "the IdP's token for gatehouse",
            &s.provider,
            mint(&s.provider, None),
            AUDIENCE,
            200,
        ),
        (
            "the IdP's token for ci-gateway",
            &s.provider,
            mint(&s.provider, for_ci),
            "ci-gateway",
            401,
        ),
        (
            "the CI issuer's token for ci-gateway",
            &ci_issuer,
            mint(&ci_issuer, for_ci),
            "ci-gateway",
            200,
        ),
        (
            "the CI issuer's token for gatehouse",
            &ci_issuer,
            mint(&ci_issuer, None),
            AUDIENCE,
            401,
        ),
    ];
    let rejected = r#"gatehouse_auth_rejected_total{reason="audience"}"#;
    for (case, issuer, token, audience, status) in &cases {
        // The token is what the case says: that issuer, that audience, a valid signature.
        let decoded = support::oidc::decode_jwt(token).expect("a JWT");
        assert_eq!(
            decoded.payload["iss"].as_str(),
            Some(issuer.issuer.as_str()),
            "{case}"
        );
        assert_eq!(decoded.payload["aud"].as_str(), Some(*audience), "{case}");
        let before = gw.metric(rejected);
        s.up.clear();
        let r = exchange(
            gw.https,
            &s.ca.ca(),
            HOST,
            get_with(
                "/api/v1/user",
                &format!("{HOST}:{}", gw.port()),
                &format!("Authorization: Bearer {token}\r\n"),
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(
            r.status(),
            Some(*status),
            "{case}: {}\n{}",
            r.text,
            gw.log()
        );
        if *status == 401 {
            assert!(
                r.text.contains("audience is not accepted"),
                "{case}: {}",
                r.text
            );
            assert_eq!(gw.metric(rejected), before + 1.0, "{case}");
            assert!(s.up.requests().is_empty(), "{case}: reached the upstream");
        } else {
            assert_eq!(s.up.requests().len(), 1, "{case}");
        }
    }
}
/// The `name=value` pairs a response sets (deletions left out), joined as a `Cookie` header.
fn cookie_pairs_set(r: &support::raw::Response) -> String {
    set_cookies(r)
        .iter()
        .filter(|c| !c.contains("Max-Age=0"))
        .filter_map(|c| c.split(';').next())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Completes a sign-in begun with [`begin_sign_in`]: the provider's callback URL sent to the
/// gateway with the pre-login cookie and whatever else the browser holds.
async fn finish_sign_in(s: &Stack, callback: &str, cookies: &str) -> support::raw::Response {
    let path = &callback[callback.find("/.gatehouse").unwrap_or(0)..];
    exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(path, &s.hp(), &format!("Cookie: {cookies}\r\n")).as_bytes(),
    )
    .await
}

/// The CSRF token of the sign-out page for this session.
async fn logout_csrf(s: &Stack, cookies: &str) -> Option<String> {
    let page = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/.gatehouse/logout",
            &s.hp(),
            &format!("Cookie: {cookies}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    page.text
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .map(str::to_string)
}

/// GET `/` as a browser with `cookies`: (status, the username Gogs was told, if it was asked).
async fn page_as(s: &Stack, cookies: &str) -> (Option<u16>, Option<String>) {
    s.up.clear();
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        get_with(
            "/",
            &s.hp(),
            &format!("Accept: text/html\r\nCookie: {cookies}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    let user =
        s.up.requests()
            .first()
            .and_then(|r| r.header("x-webauth-user").map(str::to_string));
    (r.status(), user)
}

/// Rewrites the session key file and reloads the gateway with SIGHUP.
fn reload_session_keys(s: &Stack, keys: &[&str]) {
    let metric = r#"gatehouse_config_reloads_total{result="success"}"#;
    let before = s.gw.metric(metric);
    let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
    std::fs::write(s._secrets.path("session.keys"), text).expect("write session keys");
    s.gw.signal("HUP");
    s.gw.eventually(10, "the reload", || s.gw.metric(metric) > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_replaces_the_session_and_old_keys_keep_opening_after_rotation() {
    use support::secrets::SESSION_KEY;
    let s = stack(&[], "", &[AUDIENCE], Reply::Ok).await;
    // alice already has a session (S1) when she signs in again.
    let first =
        tokio::task::block_in_place(|| s.provider.browser_login(&s.gw.url("/"), "alice", PASSWORD));
    assert!(first.ok, "{}", first.stderr);
    let s1 = first.cookie_header();
    let s1_value = first
        .cookie("__Host-gatehouse")
        .expect("no session")
        .value
        .clone();
    let s1_csrf = logout_csrf(&s, &s1).await.expect("no CSRF token for S1");

    let (authorize, login_cookie) = begin_sign_in(&s).await;
    let callback = tokio::task::block_in_place(|| provider_callback(&s, &authorize, "alice"));
    let r = finish_sign_in(&s, &callback, &format!("{login_cookie}; {s1}")).await;
    assert_eq!(r.status(), Some(302), "{}\n{}", r.text, s.gw.log());
    let set = set_cookies(&r);
    let s2_value = set
        .iter()
        .find_map(|c| c.strip_prefix("__Host-gatehouse="))
        .and_then(|c| c.split(';').next())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("no new session cookie: {set:?}"))
        .to_string();
    assert_ne!(s2_value, s1_value, "the pre-existing session was kept");
    let login_name = login_cookie.split('=').next().unwrap_or("");
    assert!(
        set.iter()
            .any(|c| c.starts_with(&format!("{login_name}=;")) && c.contains("Max-Age=0")),
        "the pre-login cookie is not deleted: {set:?}"
    );
    let s2 = cookie_pairs_set(&r);
    assert_eq!(page_as(&s, &s2).await, (Some(200), Some("alice".into())));
    // A new session id: S1's CSRF token does not sign S2 out.
    let s2_csrf = logout_csrf(&s, &s2).await.expect("no CSRF token for S2");
    assert_ne!(s2_csrf, s1_csrf, "the session id was not rotated");
    let body = format!("csrf={s1_csrf}");
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        HOST,
        format!(
            "POST /.gatehouse/logout HTTP/1.1\r\nHost: {}\r\nCookie: {s2}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            s.hp(),
            body.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(403), "{}", r.text);

    // Rotation: a new key goes in front; S2, sealed with the old key, still opens.
    let new_key = {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).expect("random key");
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    tokio::task::block_in_place(|| reload_session_keys(&s, &[&new_key, SESSION_KEY]));
    assert_eq!(
        page_as(&s, &s2).await,
        (Some(200), Some("alice".into())),
        "a session sealed with the old key stopped opening:\n{}",
        s.gw.log()
    );
    // The newest key seals: a sign-in begun now completes after the old key is gone, and
    // only then does S2 stop opening (so the old key was what opened it).
    let (authorize, login_cookie) = begin_sign_in(&s).await;
    let callback = tokio::task::block_in_place(|| provider_callback(&s, &authorize, "alice"));
    tokio::task::block_in_place(|| reload_session_keys(&s, &[&new_key]));
    let r = finish_sign_in(&s, &callback, &login_cookie).await;
    assert_eq!(r.status(), Some(302), "{}\n{}", r.text, s.gw.log());
    let s3 = cookie_pairs_set(&r);
    assert!(s3.contains("__Host-gatehouse="), "{}", r.text);
    assert_eq!(page_as(&s, &s3).await, (Some(200), Some("alice".into())));
    assert_eq!(page_as(&s, &s2).await, (Some(302), None));
}

/// A gateway serving a real git server at `localhost:PORT` (which resolves everywhere, so the
/// CLI and git need no resolver overrides), trusting a test provider; `jwt_extra` holds more
/// lines for its `[[identity.jwt]]` section. `home` is the CLI's `HOME` and config directory.
struct GitStack {
    ca: DevCa,
    provider: OidcProvider,
    _secrets: Secrets,
    _repos: tempfile::TempDir,
    server: GitServer,
    gw: TestGateway,
    home: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl GitStack {
    fn gateway_url(&self) -> String {
        format!("https://localhost:{}", self.gw.port())
    }

    fn stored_path(&self) -> std::path::PathBuf {
        self.home.path().join("gatehouse/credentials.json")
    }

    /// The stored entry for this gateway.
    fn stored(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.stored_path()).expect("no stored credentials");
        let all: serde_json::Value = serde_json::from_str(&text).expect("credentials.json");
        all["gateways"][self.gateway_url()].clone()
    }

    fn stored_mode(&self) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(self.stored_path())
            .expect("stored credentials")
            .permissions()
            .mode()
            & 0o777
    }

    /// `git` with `gatehouse git-credential` as its only credential helper.
    fn git(&self, cwd: &Path, args: &[&str]) -> Command {
        let helper = format!(
            "credential.helper=!{} git-credential",
            env!("CARGO_BIN_EXE_gatehouse")
        );
        let mut all = vec!["-c", helper.as_str()];
        all.extend_from_slice(args);
        let mut cmd = git(&self.ca, cwd, self.gw.port(), &all);
        cmd.env("XDG_CONFIG_HOME", self.home.path())
            .env("HOME", self.home.path());
        cmd
    }

    /// `gatehouse git-credential <operation>` with `input` on stdin: (success, stdout, stderr).
    fn credential(&self, operation: &str, input: &str) -> (bool, String, String) {
        use std::io::Write;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
        cmd.args(["git-credential", operation])
            .env("XDG_CONFIG_HOME", self.home.path())
            .env("HOME", self.home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.ca.apply_env(&mut cmd);
        let mut child = cmd.spawn().expect("spawn gatehouse git-credential");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
        drop(stdin);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("gatehouse git-credential {operation} did not finish");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// git's description of this gateway (`git help credential`), plus `extra` lines.
    fn describe(&self, extra: &str) -> String {
        format!(
            "protocol=https\nhost=localhost:{}\n{extra}\n",
            self.gw.port()
        )
    }

    /// `gatehouse login` for this gateway, completed in the browser as `user`.
    fn login(&self, user: &str) {
        let bin = env!("CARGO_BIN_EXE_gatehouse");
        let mut login = Command::new(bin);
        login
            .args(["login", "--gateway", &self.gateway_url()])
            .env("XDG_CONFIG_HOME", self.home.path())
            .env("HOME", self.home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.ca.apply_env(&mut login);
        let mut child = login.spawn().expect("spawn gatehouse login");
        let stdout = child.stdout.take().expect("stdout");
        let url = {
            use std::io::BufRead;
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let mut url = None;
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(u) = line.trim().strip_prefix("Open ") {
                    url = Some(u.to_string());
                    break;
                }
                line.clear();
            }
            url
        };
        let Some(url) = url else {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "gatehouse login printed no URL: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let grant = support::oidc::DeviceGrant {
            client_id: "gatehouse-cli".into(),
            device_code: String::new(),
            user_code: String::new(),
            verification_uri: url.clone(),
            verification_uri_complete: url,
            expires_in: 0,
        };
        self.provider
            .device_complete(&grant, user, PASSWORD)
            .expect("device login in the browser");
        let status = child.wait().expect("wait for gatehouse login");
        assert!(status.success(), "gatehouse login failed");
    }
}

async fn git_stack(provider_env: &[(&str, &str)], jwt_extra: &str) -> GitStack {
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start_with_env(&ca, provider_env));
    let secrets = Secrets::new(&provider, ALLOW_ALL);
    let repos = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(repos.path()).await;
    let identity = secrets.identity(&provider, "", &[AUDIENCE]).replace(
        "[identity.assertion]",
        &format!("{jwt_extra}\n[identity.assertion]"),
    );
    let gw = GatewayBuilder::new()
        .toml(&identity)
        .route_with(
            "gogs",
            "gogs",
            &["localhost"],
            &server.url(),
            &secrets.gogs_extra(),
        )
        .route_with(
            "lightstep",
            "otlp",
            &["otlp.example.test"],
            "http://127.0.0.1:9",
            &secrets.otlp_extra(),
        )
        .start(&ca);
    GitStack {
        ca,
        provider,
        _secrets: secrets,
        _repos: repos,
        server,
        gw,
        home: tempfile::tempdir().expect("tempdir"),
        work: tempfile::tempdir().expect("tempdir"),
    }
}

/// Commits a file to `branch` of the bare repository at `bare` directly (not through the
/// gateway); returns the new commit's SHA.
fn commit_directly(bare: &Path, message: &str) -> String {
    let work = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.current_dir(work.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Bob Example")
            .env("GIT_AUTHOR_EMAIL", "bob@example.test")
            .env("GIT_COMMITTER_NAME", "Bob Example")
            .env("GIT_COMMITTER_EMAIL", "bob@example.test")
            .args(args);
        let (ok, out, err) = run_with_timeout(&mut cmd, 30);
        assert!(ok, "git {args:?}: {out}{err}");
        out.trim().to_string()
    };
    let bare = bare.to_str().expect("utf-8 path");
    run(&["init", "--quiet", "--initial-branch=main"]);
    let (ok, _, _) = run_with_timeout(
        Command::new("git")
            .current_dir(work.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args(["fetch", "--quiet", bare, "main"]),
        30,
    );
    if ok {
        run(&["reset", "--quiet", "--hard", "FETCH_HEAD"]);
    }
    std::fs::write(work.path().join(format!("{message}.txt")), message).expect("write file");
    run(&["add", "."]);
    run(&["commit", "--quiet", "-m", message]);
    run(&["push", "--quiet", bare, "HEAD:main"]);
    run(&["rev-parse", "HEAD"])
}

/// `gatehouse login`'s access token expires; on the next `git fetch`, git asks
/// `gatehouse git-credential get`, which refreshes it with the stored refresh token, and the
/// fetch goes through. The refreshed tokens are stored, still readable by the user alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_helper_refreshes_an_expired_token_and_git_fetch_keeps_working() {
    // Access tokens live 4 s; the gateway allows 1 s of clock skew.
    let s = git_stack(&[("OIDC_ACCESS_TOKEN_TTL", "4")], "leeway = \"1s\"").await;
    let bare = s.server.create_repo("platform/app.git");
    let first_commit = commit_directly(&bare, "first");
    tokio::task::block_in_place(|| s.login("alice"));
    assert_eq!(s.stored_mode(), 0o600);
    let repo_url = format!("{}/platform/app.git", s.gateway_url());
    let dest = s.work.path().join("app");
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run_with_timeout(
            &mut s.git(
                s.work.path(),
                &["clone", "--quiet", &repo_url, dest.to_str().expect("utf-8")],
            ),
            60,
        )
    });
    assert!(ok, "clone failed: {out}{err}\n{}", s.gw.log());
    let head = |dir: &Path, rev: &str| {
        let (ok, out, err) = run_with_timeout(
            Command::new("git")
                .current_dir(dir)
                .args(["rev-parse", rev]),
            20,
        );
        assert!(ok, "rev-parse {rev}: {err}");
        out.trim().to_string()
    };
    assert_eq!(head(&dest, "HEAD"), first_commit);

    // Someone pushes on the server; meanwhile the stored access token expires.
    let second_commit = commit_directly(&bare, "second");
    let before = s.stored();
    let expired = before["access_token"]
        .as_str()
        .expect("no stored access token")
        .to_string();
    let expires_at = before["expires_at"].as_u64().expect("no expires_at");
    let refresh_before = before["refresh_token"]
        .as_str()
        .expect("no stored refresh token")
        .to_string();
    let wait = (expires_at + 2).saturating_sub(support::oidc::now_secs());
    tokio::time::sleep(Duration::from_secs(wait)).await;

    // The gateway refuses the expired token itself (also from its verified-token cache).
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("gatehouse:{expired}"));
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        "localhost",
        get_with(
            "/platform/app.git/info/refs?service=git-upload-pack",
            &format!("localhost:{}", s.gw.port()),
            &format!("Authorization: Basic {basic}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(
        r.status(),
        Some(401),
        "an expired token was accepted: {}",
        r.text
    );

    // git fetch: git is refused, asks the helper, which refreshes; the fetch gets the commit.
    let token_requests = |log: &str| log.lines().filter(|l| l.contains(" POST /token ")).count();
    let token_requests_before = token_requests(&s.provider.log());
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run_with_timeout(&mut s.git(&dest, &["fetch", "--quiet", "origin"]), 60)
    });
    assert!(ok, "fetch failed: {out}{err}\n{}", s.gw.log());
    assert_eq!(head(&dest, "origin/main"), second_commit);

    let after = s.stored();
    let fresh = after["access_token"]
        .as_str()
        .expect("no access token after refresh");
    assert_ne!(fresh, expired, "the expired token was not replaced");
    assert!(
        after["expires_at"].as_u64().unwrap_or(0) > support::oidc::now_secs(),
        "the stored token is not fresh: {after}"
    );
    // The provider rotates refresh tokens of public clients; the new one is kept.
    assert!(after["refresh_token"].as_str().is_some(), "{after}");
    assert_ne!(
        after["refresh_token"].as_str(),
        Some(refresh_before.as_str())
    );
    assert!(
        token_requests(&s.provider.log()) > token_requests_before,
        "no refresh at the provider:\n{}",
        s.provider.log()
    );
    assert_eq!(s.stored_mode(), 0o600, "the refreshed store is not 0600");
    let dir_mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(s.home.path().join("gatehouse"))
            .expect("store directory")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(dir_mode, 0o700);
    // The git server saw only the gateway's credential.
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("gatehouse-broker:{BROKER_TOKEN}"))
    );
    assert!(
        s.server.requests().iter().all(|(_, h)| h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(expected.as_str())),
        "the git server saw other credentials"
    );
}

/// `erase` (git found the password refused) forgets exactly the stored access token it is
/// given; `store` changes nothing (the tokens come from `gatehouse login`), and its help says
/// so. Through the binary, against a real login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_credential_erase_forgets_the_token_and_store_changes_nothing() {
    let s = git_stack(&[], "").await;
    tokio::task::block_in_place(|| s.login("alice"));
    let stored_text = || std::fs::read(s.stored_path()).expect("stored credentials");
    let (ok, out, err) = s.credential("get", &s.describe(""));
    assert!(ok, "get failed: {err}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("password="))
        .unwrap_or_else(|| panic!("get printed no password: {out}"))
        .to_string();
    assert!(out.lines().any(|l| l == "username=gatehouse"), "{out}");
    assert_eq!(s.stored()["access_token"].as_str(), Some(token.as_str()));
    let original = stored_text();

    // store: nothing is written, whatever git hands over.
    for password in [token.as_str(), "something-else"] {
        let (ok, _, err) = s.credential(
            "store",
            &s.describe(&format!("username=gatehouse\npassword={password}")),
        );
        assert!(ok, "store failed: {err}");
        assert_eq!(
            stored_text(),
            original,
            "store changed the stored credentials"
        );
    }
    // erase of a password that is not the stored token, or for another gateway: kept.
    let (ok, _, err) = s.credential(
        "erase",
        &s.describe("username=gatehouse\npassword=not-the-token"),
    );
    assert!(ok, "erase failed: {err}");
    let other = format!(
        "protocol=https\nhost=localhost:{}\nusername=gatehouse\npassword={token}\n\n",
        s.gw.port().wrapping_add(1)
    );
    let (ok, _, err) = s.credential("erase", &other);
    assert!(ok, "erase failed: {err}");
    assert_eq!(
        stored_text(),
        original,
        "an unrelated erase changed the store"
    );

    // erase of the stored token: it is gone from the file, which stays 0600.
    let (ok, _, err) = s.credential(
        "erase",
        &s.describe(&format!("username=gatehouse\npassword={token}")),
    );
    assert!(ok, "erase failed: {err}");
    let text = String::from_utf8(stored_text()).expect("utf-8");
    assert!(!text.contains(&token), "the erased token is still stored");
    assert!(s.stored()["access_token"].is_null(), "{}", s.stored());
    assert_eq!(s.stored_mode(), 0o600);

    // The next get does not hand out the erased token: it asks the provider for a new one
    // with the refresh token, and that one works through the gateway.
    let (ok, out, err) = s.credential("get", &s.describe(""));
    assert!(ok, "get after erase failed: {err}");
    let fresh = out
        .lines()
        .find_map(|l| l.strip_prefix("password="))
        .unwrap_or_else(|| panic!("get printed no password: {out}"));
    assert_ne!(fresh, token, "the erased token came back");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("gatehouse:{fresh}"));
    s.server.create_repo("platform/app.git");
    let r = exchange(
        s.gw.https,
        &s.ca.ca(),
        "localhost",
        get_with(
            "/platform/app.git/info/refs?service=git-upload-pack",
            &format!("localhost:{}", s.gw.port()),
            &format!("Authorization: Basic {basic}\r\n"),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);

    // The help names what each operation does.
    let (ok, help, err) = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_gatehouse")).args(["git-credential", "--help"]),
        20,
    );
    assert!(ok, "{err}");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("store does nothing"), "{help}");
    assert!(help.contains("erase forgets"), "{help}");
}

/// A provider that keeps `groups` out of its ID tokens (many do, giving them only at the
/// userinfo endpoint): with `groups_source = "userinfo"` the gateway reads them there, and a
/// policy rule on that group lets the browser session in. The same sign-in through a gateway
/// reading groups from the ID token finds none and is refused, as is a person outside the
/// group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_from_the_userinfo_endpoint_satisfy_a_group_rule() {
    const SRE_ONLY: &str = "roles:\n  sre: { groups: [sre] }\nrules:\n  - id: sre-gogs\n    route: gogs\n    roles: [sre]\n";
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| {
        OidcProvider::start_with_env(&ca, &[("OIDC_ID_TOKEN_GROUPS", "omit")])
    });
    let secrets = Secrets::new(&provider, SRE_ONLY);
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gateway = |identity: &str| {
        GatewayBuilder::new()
            .toml(identity)
            .route_with("gogs", "gogs", &[HOST], &up.url(), &secrets.gogs_extra())
            .start(&ca)
    };
    let id_token_identity = secrets.identity(&provider, "", &[AUDIENCE]);
    let userinfo_identity = id_token_identity.replace(
        "prompt = \"consent\"\n",
        "prompt = \"consent\"\ngroups_source = \"userinfo\"\n",
    );
    assert_ne!(userinfo_identity, id_token_identity);
    let userinfo_gw = gateway(&userinfo_identity);
    let id_token_gw = gateway(&id_token_identity);
    let sign_in = |gw: &TestGateway, user: &str| {
        tokio::task::block_in_place(|| provider.browser_login(&gw.url("/"), user, PASSWORD))
    };
    let userinfo_requests = |log: &str| log.lines().filter(|l| l.contains(" GET /me ")).count();

    // bob is in sre, which only userinfo says.
    let bob = sign_in(&userinfo_gw, "bob");
    assert_eq!(
        bob.status,
        Some(200),
        "{}: {}\n{}",
        bob.final_url,
        bob.body,
        userinfo_gw.log()
    );
    let seen = up.requests();
    let page = seen
        .iter()
        .find(|r| r.target == "/")
        .unwrap_or_else(|| panic!("the page did not reach Gogs: {seen:?}"));
    assert_eq!(page.header("x-webauth-user"), Some("bob"));
    // The identity the gateway vouches for carries the groups userinfo gave.
    let assertion = page
        .header("x-gatehouse-identity")
        .expect("no identity assertion");
    let claims = support::oidc::decode_jwt(assertion)
        .expect("assertion")
        .payload;
    let groups = claims["groups"].as_str_vec().unwrap_or_default();
    assert!(groups.contains(&"sre"), "{claims:?}");
    assert!(
        userinfo_requests(&provider.log()) >= 1,
        "the gateway never asked userinfo:\n{}",
        provider.log()
    );
    let rules: Vec<Option<String>> = userinfo_gw
        .audit_records()
        .into_iter()
        .filter_map(|r| r.decision)
        // Decisions of the policy (sign-in endpoints are allowed without it).
        .filter(|d| d.effect == "allow" && d.policy.is_some())
        .map(|d| d.rule)
        .collect();
    assert!(
        !rules.is_empty() && rules.iter().all(|r| r.as_deref() == Some("sre-gogs")),
        "not allowed by the group rule: {rules:?}"
    );
    let reached = seen.len();

    // The same person through a gateway reading groups from the ID token: no groups, refused.
    let bob = sign_in(&id_token_gw, "bob");
    assert_eq!(bob.status, Some(403), "{}: {}", bob.final_url, bob.body);
    // alice is not in sre: userinfo does not make her so.
    let alice = sign_in(&userinfo_gw, "alice");
    assert_eq!(
        alice.status,
        Some(403),
        "{}: {}",
        alice.final_url,
        alice.body
    );
    assert_eq!(up.requests().len(), reached, "a refused page reached Gogs");
}

/// Two Gogs service credentials, one for the CI client and one for the engineering group:
/// a CI client token and a person's `gatehouse login` token each make the gateway present
/// its own credential for them (first match wins), and someone matching neither gets none,
/// never their own token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_picks_the_gogs_credential_by_client_and_by_group() {
    const CI_GOGS_TOKEN: &str = "gogs-ci-token-71d2";
    const ENG_GOGS_TOKEN: &str = "gogs-eng-token-c40b";
    let ca = DevCa::new();
    let provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    let secrets = Secrets::new(
        &provider,
        "rules:\n  - id: anyone-gogs\n    route: gogs\n    roles: [\"*\"]\n",
    );
    for (name, token) in [("ci-token", CI_GOGS_TOKEN), ("eng-token", ENG_GOGS_TOKEN)] {
        use std::os::unix::fs::PermissionsExt;
        let path = secrets.dir.path().join(name);
        std::fs::write(&path, token).expect("write token");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod token");
    }
    let gogs = format!(
        "[routes.gogs]\n\
         [[routes.gogs.credentials]]\nusername = \"ci-bot\"\ntoken_file = {ci:?}\nclients = [{CI_CLIENT:?}]\n\
         [[routes.gogs.credentials]]\nusername = \"eng-bot\"\ntoken_file = {eng:?}\ngroups = [\"engineering\"]\n",
        ci = secrets.path("ci-token"),
        eng = secrets.path("eng-token"),
    );
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .toml(&secrets.identity(&provider, "", &[AUDIENCE]))
        .route_with("gogs", "gogs", &[HOST], &up.url(), &gogs)
        .start(&ca);
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    let hp = format!("{HOST}:{}", gw.port());
    // One request with `authorization` carrying `token`; the Authorization Gogs received
    // (checking the caller's token reached Gogs in no header).
    let forwarded = |path: &'static str, authorization: String, token: String| {
        let (ca, up, hp) = (ca.ca(), &up, hp.clone());
        let https = gw.https;
        async move {
            up.clear();
            let r = exchange(
                https,
                &ca,
                HOST,
                get_with(path, &hp, &format!("Authorization: {authorization}\r\n")).as_bytes(),
            )
            .await;
            assert_eq!(r.status(), Some(200), "{path}: {}", r.text);
            let seen = up.requests();
            assert_eq!(seen.len(), 1, "{seen:?}");
            assert!(seen[0].header_count("authorization") <= 1, "{seen:?}");
            assert!(
                seen[0]
                    .headers
                    .values()
                    .all(|v| !String::from_utf8_lossy(v.as_bytes()).contains(&token)),
                "the caller's token reached Gogs: {seen:?}"
            );
            seen[0].header("authorization").map(str::to_string)
        }
    };

    // A CI pipeline's client-credentials token, on the API and on git.
    let ci = tokio::task::block_in_place(|| {
        provider.client_credentials_token(CI_CLIENT, &provider.ci_secret, &[])
    });
    for path in [
        "/api/v1/repos/platform/app",
        "/platform/app.git/info/refs?service=git-upload-pack",
    ] {
        assert_eq!(
            forwarded(path, format!("Bearer {ci}"), ci.clone()).await,
            Some(basic("ci-bot", CI_GOGS_TOKEN)),
            "{path}"
        );
    }

    // People's tokens from the device grant (what `gatehouse login` stores).
    let person = |user: &str| {
        tokio::task::block_in_place(|| {
            let grant = provider.device_authorize(support::oidc::CLI_CLIENT);
            provider
                .device_complete(&grant, user, PASSWORD)
                .expect("device login");
            provider.device_token(&grant).access_token
        })
    };
    let alice = person("alice");
    let claims = support::oidc::decode_jwt(&alice).expect("JWT").payload;
    assert_eq!(claims["groups"].as_str_vec(), Some(vec!["engineering"]));
    assert_eq!(claims["client_id"].as_str(), Some("gatehouse-cli"));
    // As git sends it (Basic, token as password) and as a bearer on the API.
    assert_eq!(
        forwarded(
            "/platform/app.git/info/refs?service=git-upload-pack",
            basic("alice", &alice),
            alice.clone()
        )
        .await,
        Some(basic("eng-bot", ENG_GOGS_TOKEN))
    );
    assert_eq!(
        forwarded(
            "/api/v1/repos/platform/app",
            format!("Bearer {alice}"),
            alice.clone()
        )
        .await,
        Some(basic("eng-bot", ENG_GOGS_TOKEN))
    );

    // carol is in neither: no service credential, and not her own token either.
    let carol = person("carol");
    assert_eq!(
        forwarded(
            "/api/v1/repos/platform/app",
            format!("Bearer {carol}"),
            carol.clone()
        )
        .await,
        None
    );
    let log = gw.log();
    assert!(
        !log.contains(CI_GOGS_TOKEN) && !log.contains(ENG_GOGS_TOKEN),
        "a Gogs token was logged"
    );
}

/// The provider goes away: every background JWKS fetch fails and is counted as
/// `gatehouse_jwks_refresh_total{result="error"}`, while the cached keys keep verifying
/// tokens (also ones the gateway never saw). When the provider is back (same issuer, same
/// keys), fetches succeed again and its new tokens verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_refresh_errors_are_counted_while_the_provider_is_down_and_it_recovers() {
    let ca = DevCa::new();
    let mut provider = tokio::task::block_in_place(|| OidcProvider::start(&ca));
    let secrets = Secrets::new(&provider, ALLOW_ALL);
    let up = RecordingUpstream::start(Reply::Ok).await;
    let gw = GatewayBuilder::new()
        .toml(&format!(
            "[identity]\njwks_refresh = \"1s\"\n{}",
            secrets.identity(&provider, "", &[AUDIENCE])
        ))
        .route_with("gogs", "gogs", &[HOST], &up.url(), &secrets.gogs_extra())
        .route_with(
            "lightstep",
            "otlp",
            &["otlp.example.test"],
            &up.url(),
            &secrets.otlp_extra(),
        )
        .start(&ca);
    let sample = |result: &str| {
        format!(
            "gatehouse_jwks_refresh_total{{issuer=\"{}\",result=\"{result}\"}}",
            provider.issuer
        )
    };
    let (ok_sample, error_sample) = (sample("success"), sample("error"));
    let ci = |p: &OidcProvider| p.client_credentials_token(CI_CLIENT, &p.ci_secret, &[]);
    let port = gw.port();
    let post = |token: String| {
        let ca = ca.ca();
        let https = gw.https;
        async move {
            let r = exchange(
                https,
                &ca,
                "otlp.example.test",
                format!(
                    "POST /v1/traces HTTP/1.1\r\nHost: otlp.example.test:{port}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
            r.status()
        }
    };
    let first = tokio::task::block_in_place(|| ci(&provider));
    let unseen = tokio::task::block_in_place(|| ci(&provider));
    tokio::task::block_in_place(|| {
        gw.eventually(10, "a successful JWKS fetch", || {
            gw.metric(&ok_sample) >= 2.0
        })
    });
    assert_eq!(post(first.clone()).await, Some(200), "{}", gw.log());
    assert_eq!(gw.metric(&error_sample), 0.0);

    // Down: fetches fail, and are counted, one after another.
    tokio::task::block_in_place(|| provider.stop());
    tokio::task::block_in_place(|| {
        gw.eventually(10, "JWKS fetch errors counted", || {
            gw.metric(&error_sample) >= 2.0
        })
    });
    assert!(
        gw.log()
            .contains("JWKS refresh failed; cached keys stay in use"),
        "{}",
        gw.log()
    );
    // The cached keys keep verifying: a token verified before, and one never seen.
    assert_eq!(post(first).await, Some(200), "{}", gw.log());
    assert_eq!(
        post(unseen).await,
        Some(200),
        "a valid token failed with the provider down:\n{}",
        gw.log()
    );

    // Back: fetches succeed again and stop failing; the provider's new tokens verify.
    let ok_while_down = gw.metric(&ok_sample);
    tokio::task::block_in_place(|| provider.restart());
    tokio::task::block_in_place(|| {
        gw.eventually(10, "a JWKS fetch after the provider returned", || {
            gw.metric(&ok_sample) > ok_while_down
        })
    });
    let errors = gw.metric(&error_sample);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        gw.metric(&error_sample),
        errors,
        "fetches kept failing after the provider returned:\n{}",
        gw.log()
    );
    assert!(gw.metric(&ok_sample) > ok_while_down + 1.0);
    let after = tokio::task::block_in_place(|| ci(&provider));
    assert_eq!(post(after).await, Some(200), "{}", gw.log());
    assert_eq!(up.requests().len(), 4, "{:?}", up.requests());
}
