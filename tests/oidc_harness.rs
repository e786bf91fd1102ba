//! The OIDC test harness itself, against the real provider (tests/oidc/provider.mjs) and a real
//! headless Chromium; no gateway involved.

mod support;

use support::DevCa;
use support::oidc::{
    self, AUDIENCE, CI_CLIENT, CLI_CLIENT, Json, OidcProvider, PASSWORD, WEB_CLIENT, decode_jwt,
    now_secs, pkce_pair, query_params,
};

fn strs(v: &Json) -> Vec<&str> {
    v.as_str_vec()
        .unwrap_or_else(|| panic!("not an array of strings: {v:?}"))
}

#[test]
fn discovery_advertises_device_flow_logout_and_rfc9207_iss() {
    let ca = DevCa::new();
    let op = OidcProvider::start(&ca);
    let port = op
        .issuer
        .strip_prefix("https://127.0.0.1:")
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("issuer {}", op.issuer));
    assert_ne!(port, 0);
    let d = op.discovery();
    assert_eq!(d["issuer"].as_str(), Some(op.issuer.as_str()));
    assert_eq!(
        d["device_authorization_endpoint"].as_str(),
        Some(format!("{}/device/auth", op.issuer).as_str())
    );
    assert_eq!(
        d["end_session_endpoint"].as_str(),
        Some(format!("{}/session/end", op.issuer).as_str())
    );
    assert_eq!(
        d["authorization_response_iss_parameter_supported"].as_bool(),
        Some(true)
    );
    assert_eq!(strs(&d["code_challenge_methods_supported"]), ["S256"]);
    for scope in ["openid", "profile", "email", "groups", "offline_access"] {
        assert!(
            strs(&d["scopes_supported"]).contains(&scope),
            "scope {scope}: {d:?}"
        );
    }
    assert!(strs(&d["claims_supported"]).contains(&"groups"));

    // JWKS: the three generated keys, public parts only.
    let (status, jwks) = op.get_json(&op.endpoint("jwks_uri"));
    assert_eq!(status, 200);
    let keys = jwks["keys"].as_array().expect("keys");
    let kids: Vec<(&str, &str)> = keys
        .iter()
        .map(|k| (k["kid"].as_str().unwrap(), k["alg"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kids,
        [("rs-1", "RS256"), ("es-1", "ES256"), ("ed-1", "EdDSA")]
    );
    assert!(
        keys.iter().all(|k| k["d"].is_null()),
        "private parts leaked"
    );

    let mut op = op;
    assert!(
        op.stop().success(),
        "provider did not exit cleanly on SIGTERM"
    );
    assert!(
        op.log()
            .contains("GET /.well-known/openid-configuration 200")
    );
}

#[test]
fn client_credentials_token_is_an_rfc9068_jwt_for_gatehouse() {
    let ca = DevCa::new();
    let op = OidcProvider::start(&ca);
    let token = op.client_credentials_token(CI_CLIENT, &op.ci_secret, &[]);
    let jwt = decode_jwt(&token).expect("a JWT");
    assert_eq!(
        jwt.header["typ"].as_str(),
        Some("at+jwt"),
        "{:?}",
        jwt.header
    );
    assert_eq!(jwt.header["alg"].as_str(), Some("RS256"));
    assert_eq!(jwt.header["kid"].as_str(), Some("rs-1"));
    assert_eq!(jwt.signature.len(), 256, "RS256 with a 2048-bit key");
    let p = &jwt.payload;
    assert_eq!(p["aud"].as_str(), Some(AUDIENCE), "{p:?}");
    assert_eq!(p["sub"].as_str(), Some(CI_CLIENT));
    assert_eq!(p["client_id"].as_str(), Some(CI_CLIENT));
    assert_eq!(p["iss"].as_str(), Some(op.issuer.as_str()));
    let exp = p["exp"].as_u64().expect("exp");
    let now = now_secs();
    assert!(exp > now && exp <= now + 600 + 30, "exp {exp} now {now}");
    assert!(p["groups"].is_null(), "no user claims for a client: {p:?}");

    // Another signing key by resource indicator.
    let es = op.client_credentials_token(
        CI_CLIENT,
        &op.ci_secret,
        &[("resource", "urn:gatehouse:alg:ES256")],
    );
    let es = decode_jwt(&es).unwrap();
    assert_eq!(es.header["alg"].as_str(), Some("ES256"));
    assert_eq!(es.header["kid"].as_str(), Some("es-1"));
    assert_eq!(es.payload["aud"].as_str(), Some(AUDIENCE));

    // A wrong secret is refused.
    let (status, err) = op.token_request(
        Some((CI_CLIENT, "not-the-secret")),
        &[("grant_type", "client_credentials")],
    );
    assert_eq!(status, 401, "{err:?}");
    assert_eq!(err["error"].as_str(), Some("invalid_client"));
}

#[test]
fn device_grant_completed_in_browser_yields_alice_with_groups_and_refresh_token() {
    let ca = DevCa::new();
    let op = OidcProvider::start(&ca);
    let grant = op.device_authorize(CLI_CLIENT);
    assert!(
        grant
            .verification_uri_complete
            .starts_with(&format!("{}/device?user_code=", op.issuer)),
        "{grant:?}"
    );
    // Nothing before the user acts.
    let (status, pending) = op.try_device_token(&grant).expect_err("pending");
    assert_eq!(status, 400);
    assert_eq!(pending["error"].as_str(), Some("authorization_pending"));

    op.device_complete(&grant, "alice", PASSWORD)
        .unwrap_or_else(|e| panic!("device login failed: {e}\n{}", op.log()));
    let tokens = op.device_token(&grant);

    let at = decode_jwt(&tokens.access_token).expect("JWT access token");
    assert_eq!(at.header["typ"].as_str(), Some("at+jwt"));
    let p = &at.payload;
    assert_eq!(p["sub"].as_str(), Some("alice"), "{p:?}");
    assert_eq!(p["aud"].as_str(), Some(AUDIENCE));
    assert_eq!(p["client_id"].as_str(), Some(CLI_CLIENT));
    assert_eq!(p["iss"].as_str(), Some(op.issuer.as_str()));
    assert_eq!(strs(&p["groups"]), ["engineering"]);
    assert_eq!(p["preferred_username"].as_str(), Some("alice"));
    assert_eq!(p["email"].as_str(), Some("alice@example.test"));
    assert_eq!(p["email_verified"].as_bool(), Some(true));

    let id = decode_jwt(tokens.id_token.as_deref().expect("id_token")).unwrap();
    assert_eq!(id.payload["aud"].as_str(), Some(CLI_CLIENT));
    assert_eq!(strs(&id.payload["groups"]), ["engineering"]);
    assert_eq!(id.payload["name"].as_str(), Some("Alice Example"));

    let refresh = tokens.refresh_token.clone().expect("refresh token");
    assert!(!refresh.is_empty());
    // The refresh token works and yields another JWT for alice.
    let again = op
        .refresh(CLI_CLIENT, None, &refresh)
        .unwrap_or_else(|e| panic!("refresh: {e:?}"));
    let at2 = decode_jwt(&again.access_token).unwrap();
    assert_eq!(at2.payload["sub"].as_str(), Some("alice"));
    assert_eq!(at2.payload["aud"].as_str(), Some(AUDIENCE));
    assert_ne!(again.access_token, tokens.access_token);
    // The device code is single use.
    assert!(op.try_device_token(&grant).is_err());
}

#[test]
fn wrong_password_is_refused_and_the_device_stays_pending() {
    let ca = DevCa::new();
    let op = OidcProvider::start(&ca);
    let grant = op.device_authorize(CLI_CLIENT);
    let err = op
        .device_complete(&grant, "alice", "wrong horse")
        .expect_err("a wrong password must not complete the device login");
    assert!(err.contains("invalid credentials"), "{err}");
    let (_, pending) = op.try_device_token(&grant).expect_err("still pending");
    assert_eq!(pending["error"].as_str(), Some("authorization_pending"));
    assert!(op.log().contains("login refused for \"alice\""));
}

/// The web client's code flow with PKCE on a random port. The callback "server" is the provider
/// itself (its certificate covers git.example.test too), so the browser ends on a 404 whose URL
/// carries the authorization response.
#[test]
fn web_code_flow_accepts_any_port_and_returns_iss() {
    let ca = DevCa::new();
    let op = OidcProvider::start(&ca);
    let port = op.issuer.rsplit(':').next().unwrap();
    let redirect_uri = format!("https://git.example.test:{port}/.gatehouse/oidc/callback");
    let (verifier, challenge) = pkce_pair();
    let url = op.authorize_url(
        &redirect_uri,
        "openid profile email groups offline_access",
        "state-123",
        "nonce-456",
        &challenge,
        &[("prompt", "consent")],
    );
    let outcome = op.browser_login(&url, "bob", PASSWORD);
    assert!(outcome.login_form_seen, "{outcome:?}");
    assert_eq!(outcome.login_error, None);
    assert!(
        outcome.final_url.starts_with(&redirect_uri),
        "{outcome:?}\n{}",
        op.log()
    );
    let q = query_params(&outcome.final_url);
    assert_eq!(q.get("state").map(String::as_str), Some("state-123"));
    assert_eq!(q.get("iss"), Some(&op.issuer), "RFC 9207 iss");
    let code = q.get("code").expect("code");
    let session = outcome.cookie("_session").expect("provider session cookie");
    assert!(session.secure && session.http_only, "{session:?}");

    let tokens = op
        .exchange_code(code, &redirect_uri, &verifier)
        .unwrap_or_else(|e| panic!("code exchange: {e:?}\n{}", op.log()));

    let id = decode_jwt(tokens.id_token.as_deref().expect("id_token")).unwrap();
    assert_eq!(id.header["alg"].as_str(), Some("RS256"));
    assert_eq!(id.payload["sub"].as_str(), Some("bob"));
    assert_eq!(id.payload["aud"].as_str(), Some(WEB_CLIENT));
    assert_eq!(id.payload["nonce"].as_str(), Some("nonce-456"));
    assert_eq!(strs(&id.payload["groups"]), ["sre", "engineering"]);
    assert!(tokens.refresh_token.is_some(), "offline_access: {tokens:?}");

    // The web client's access token is opaque and works at userinfo.
    assert!(decode_jwt(&tokens.access_token).is_err());
    let (status, body) = op.userinfo(&tokens.access_token);
    assert_eq!(status, 200, "{body}");
    let info = Json::parse(&body).unwrap();
    assert_eq!(info["preferred_username"].as_str(), Some("bob"));
    assert_eq!(strs(&info["groups"]), ["sre", "engineering"]);

    // Codes are single use; replaying one also revokes what it issued (RFC 6749 4.1.2).
    let (status, err) = op
        .exchange_code(code, &redirect_uri, &verifier)
        .expect_err("codes are single use");
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(op.userinfo(&tokens.access_token).0, 401);

    // Other hosts, paths and schemes are not accepted as redirect URIs.
    for bad in [
        format!("https://evil.example.test:{port}/.gatehouse/oidc/callback"),
        format!("https://git.example.test:{port}/.gatehouse/oidc/callback2"),
        format!("http://git.example.test:{port}/.gatehouse/oidc/callback"),
    ] {
        let url = op.authorize_url(&bad, "openid", "s", "n", &challenge, &[]);
        let (status, _) = op.http(&[url.as_str()]);
        assert_eq!(status, 400, "{bad} accepted");
    }
}

#[test]
fn json_and_base64url_helpers() {
    let j = Json::parse(r#"{"a":[1,true,null,"x\u00e9\ud83d\ude00\n"],"b":{"c":-2.5e1}}"#).unwrap();
    assert_eq!(j["a"][0].as_u64(), Some(1));
    assert_eq!(j["a"][1].as_bool(), Some(true));
    assert!(j["a"][2].is_null());
    assert_eq!(j["a"][3].as_str(), Some("xé😀\n"));
    assert_eq!(j["b"]["c"].as_f64(), Some(-25.0));
    assert!(j["missing"].is_null());
    assert!(Json::parse("{\"a\":1,}").is_err());
    assert!(Json::parse("[1] x").is_err());
    assert_eq!(oidc::base64url_decode("aGk_-w").unwrap(), b"hi?\xfb");
    assert!(oidc::base64url_decode("a").is_err());
    assert_eq!(oidc::form_encode("a b/é"), "a%20b%2F%C3%A9");
    let q = query_params("https://x/cb?code=a%2Bb&iss=https%3A%2F%2Fh%3A1&state=s+t#frag");
    assert_eq!(q["code"], "a+b");
    assert_eq!(q["iss"], "https://h:1");
    assert_eq!(q["state"], "s t");
}
