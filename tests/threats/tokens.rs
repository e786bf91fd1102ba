//! JWT attacks on a bearer route: tokens that are unsigned, signed the wrong way, signed by
//! someone else, or validly signed but not meant for this use. Each is answered 401 with a
//! challenge, audited as `token_rejected` with the reason, and nothing reaches Gogs.
//!
//! Tokens the real provider cannot be made to mint (expired, not yet valid, no `sub`) come
//! from a second trusted issuer whose key the test holds (`Forge`), so the one defect is the
//! only reason for the refusal: the same issuer's well-formed token is accepted.

use serde_json::json;

use crate::harness::{Forge, Stack, b64, now_secs};
use crate::support::oidc::{CI_CLIENT, CLI_CLIENT, PASSWORD, base64url_decode};

fn api(s: &Stack, authorization: &str) -> String {
    format!(
        "GET /api/v1/user HTTP/1.1\r\nHost: {}\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n",
        s.host()
    )
}

/// The token is refused: 401 with a challenge, nothing upstream, one `token_rejected` record
/// with `reason`, and no identity on it.
async fn rejected(s: &Stack, threat: &str, token: &str, reason: &str) {
    for authorization in [
        format!("Bearer {token}"),
        // git sends the token as the password of Basic.
        format!("Basic {}", b64_std(&format!("alice:{token}"))),
    ] {
        let r = s.send(api(s, &authorization).as_bytes()).await;
        assert_eq!(r.status(), Some(401), "{threat}: {}", r.text);
        assert!(
            r.header("www-authenticate").is_some(),
            "{threat}: no challenge: {}",
            r.text
        );
        assert!(
            s.up.requests().is_empty(),
            "{threat}: reached the upstream: {:?}",
            s.up.requests()
        );
        let rec = s.denied_record(threat, &r, 401, reason);
        assert_eq!(rec.kind, "token_rejected", "{threat}: {rec:#?}");
        assert!(rec.identity.is_none(), "{threat}: {rec:#?}");
    }
}

fn b64_std(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `header.claims.signature` with the given raw parts.
fn jwt(header: &serde_json::Value, claims: &serde_json::Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// Claims alice's real token carries, for tokens pretending to be from the real provider.
fn provider_claims(s: &Stack) -> serde_json::Value {
    let now = now_secs();
    json!({
        "iss": s.provider().issuer, "aud": "gatehouse", "sub": "alice",
        "exp": now + 300, "iat": now, "client_id": CLI_CLIENT, "scope": "openid",
    })
}

/// The forge issuer is trusted: its well-formed token is accepted (and reaches the upstream).
async fn forge_is_trusted(s: &Stack, forge: &Forge) {
    let token = forge.token(&forge.claims());
    let r = s.send(api(s, &format!("Bearer {token}")).as_bytes()).await;
    assert_eq!(r.status(), Some(200), "a valid forged token: {}", r.text);
    s.up.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_token_is_refused() {
    let s = Stack::gogs().await;
    let claims = provider_claims(&s);
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": "rs-1"});
        rejected(
            &s,
            &format!("alg {alg}, no signature"),
            &jwt(&header, &claims, b""),
            "token is not a JWT",
        )
        .await;
        rejected(
            &s,
            &format!("alg {alg}, junk signature"),
            &jwt(&header, &claims, b"junk"),
            "token is not a JWT",
        )
        .await;
    }
    // No alg at all.
    rejected(
        &s,
        "no alg",
        &jwt(&json!({"typ": "at+jwt", "kid": "rs-1"}), &claims, b""),
        "token is not a JWT",
    )
    .await;
}

/// DER: a tag, its length, its content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(be: &[u8]) -> Vec<u8> {
    let mut v = be.to_vec();
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    der(0x02, &v)
}

/// The provider's RSA key `rs-1` as the PEM `PUBLIC KEY` (SPKI) a verifier would hold, and
/// its JWK as JSON text: the secrets an algorithm-confusion attacker tries as HMAC keys.
fn provider_public_key(s: &Stack) -> (String, Vec<u8>, String) {
    let p = s.provider();
    let (status, jwks) = p.get_json(&p.endpoint("jwks_uri"));
    assert_eq!(status, 200);
    let key = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"].as_str() == Some("rs-1"))
        .expect("rs-1 in the provider's JWKS");
    let n = base64url_decode(key["n"].as_str().expect("n")).expect("n");
    let e = base64url_decode(key["e"].as_str().expect("e")).expect("e");
    let rsa = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
    let alg_id = der(
        0x30,
        &[
            der(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            ),
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    let spki = der(
        0x30,
        &[alg_id, der(0x03, &[&[0u8][..], &rsa].concat())].concat(),
    );
    let body = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&spki)
    };
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    );
    let jwk = format!(
        r#"{{"kty":"RSA","kid":"rs-1","n":"{}","e":"{}"}}"#,
        key["n"].as_str().expect("n"),
        key["e"].as_str().expect("e")
    );
    (pem, spki, jwk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_signed_with_the_providers_public_key_is_refused() {
    // Algorithm confusion: a verifier that takes the algorithm from the token would check an
    // HMAC made with the (public) RSA key as the shared secret.
    let s = Stack::gogs().await;
    let (pem, der, jwk) = provider_public_key(&s);
    let claims = provider_claims(&s);
    for (alg, hmac) in [
        ("HS256", aws_lc_rs::hmac::HMAC_SHA256),
        ("HS384", aws_lc_rs::hmac::HMAC_SHA384),
        ("HS512", aws_lc_rs::hmac::HMAC_SHA512),
    ] {
        for (what, secret) in [
            ("PEM", pem.as_bytes()),
            ("DER", &der[..]),
            ("JWK", jwk.as_bytes()),
        ] {
            let header = json!({"alg": alg, "typ": "at+jwt", "kid": "rs-1"});
            let input = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            let tag =
                aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(hmac, secret), input.as_bytes());
            rejected(
                &s,
                &format!("{alg} keyed with the {what} public key"),
                &format!("{input}.{}", b64(tag.as_ref())),
                &format!("algorithm {alg} is not accepted"),
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused() {
    let (s, forge) = Stack::gogs_with_forge(|b| b).await;
    forge_is_trusted(&s, &forge).await;
    let now = now_secs();
    // Beyond the 30 s leeway, and long expired.
    for (threat, exp) in [
        ("expired a minute ago", now - 60),
        ("expired a day ago", now - 86_400),
    ] {
        let mut claims = forge.claims();
        claims["exp"] = json!(exp);
        claims["iat"] = json!(exp - 300);
        rejected(&s, threat, &forge.token(&claims), "token has expired").await;
    }
    // No `exp` at all: a token that would never expire.
    let mut claims = forge.claims();
    claims.as_object_mut().expect("object").remove("exp");
    rejected(
        &s,
        "no exp",
        &forge.token(&claims),
        "required claim exp is missing",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yet_valid_token_is_refused() {
    let (s, forge) = Stack::gogs_with_forge(|b| b).await;
    forge_is_trusted(&s, &forge).await;
    let now = now_secs();
    let mut claims = forge.claims();
    claims["nbf"] = json!(now + 3600);
    rejected(
        &s,
        "nbf in an hour",
        &forge.token(&claims),
        "token is not valid yet",
    )
    .await;
    let mut claims = forge.claims();
    claims["iat"] = json!(now + 3600);
    rejected(
        &s,
        "issued in an hour",
        &forge.token(&claims),
        "token is not valid yet",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_is_refused() {
    let (s, forge) = Stack::gogs_with_forge(|b| b).await;
    forge_is_trusted(&s, &forge).await;
    // A real token from the provider, for another API.
    let other = tokio::task::block_in_place(|| {
        let p = s.provider();
        p.client_credentials_token(
            CI_CLIENT,
            &p.ci_secret,
            &[("resource", "urn:audience:another-api")],
        )
    });
    rejected(
        &s,
        "provider token for another API",
        &other,
        "audience is not accepted",
    )
    .await;
    for (threat, aud) in [
        ("another audience", json!("another-api")),
        (
            "audience list without ours",
            json!(["another-api", "billing"]),
        ),
        ("audience differing in case", json!("Gatehouse")),
        ("empty audience list", json!([])),
    ] {
        let mut claims = forge.claims();
        claims["aud"] = aud;
        let reason = if threat == "empty audience list" {
            "aud"
        } else {
            "audience is not accepted"
        };
        rejected(&s, threat, &forge.token(&claims), reason).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_issuer_is_refused() {
    let (s, forge) = Stack::gogs_with_forge(|b| b).await;
    forge_is_trusted(&s, &forge).await;
    // Signed by a trusted key, claiming an issuer nobody trusts.
    for iss in ["https://evil.example.test", "https://127.0.0.1:1", ""] {
        let mut claims = forge.claims();
        claims["iss"] = json!(iss);
        rejected(
            &s,
            &format!("iss {iss:?}"),
            &forge.token(&claims),
            "issuer is not trusted",
        )
        .await;
    }
    // One trusted issuer speaking for another: the real provider's issuer and key id, signed
    // with the forge's key. The provider's keys decide, and they do not verify it.
    let mut claims = forge.claims();
    claims["iss"] = json!(s.provider().issuer);
    let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": "rs-1"});
    rejected(
        &s,
        "another trusted issuer's name",
        &forge.sign(&header, &claims),
        "signature is invalid",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_token_used_as_access_token_is_refused() {
    let (s, forge) = Stack::gogs_with_forge(|b| b).await;
    forge_is_trusted(&s, &forge).await;
    // A real ID token from the provider (device login of the CLI): made for the client, so its
    // audience is the client id.
    let id_token = tokio::task::block_in_place(|| {
        let p = s.provider();
        let grant = p.device_authorize(CLI_CLIENT);
        p.device_complete(&grant, "alice", PASSWORD).expect("login");
        p.device_token(&grant).id_token.expect("an ID token")
    });
    rejected(
        &s,
        "the provider's ID token",
        &id_token,
        "audience is not accepted",
    )
    .await;
    // An ID token that names the gateway as audience too (an operator listing a client id as
    // an audience): the ID-token markers stop it.
    let mut with_nonce = forge.claims();
    with_nonce["nonce"] = json!("n-0S6_WzA2Mj");
    rejected(
        &s,
        "ID token with a nonce",
        &forge.token(&with_nonce),
        "ID tokens are not accepted",
    )
    .await;
    let mut typed = forge.claims();
    typed["typ"] = json!("ID");
    rejected(
        &s,
        "ID token typed ID (Keycloak)",
        &forge.token(&typed),
        "ID tokens are not accepted",
    )
    .await;
    let header = json!({"alg": "RS256", "typ": "id_token+jwt", "kid": forge.kid});
    rejected(
        &s,
        "ID token typed in its header",
        &forge.sign(&header, &forge.claims()),
        "ID tokens are not accepted",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_signature_byte_is_refused() {
    let s = Stack::gogs().await;
    let token = s.alice.clone().expect("alice's token");
    let (input, sig) = token.rsplit_once('.').expect("three parts");
    let sig = base64url_decode(sig).expect("signature");
    for at in [0, sig.len() / 2, sig.len() - 1] {
        let mut bad = sig.clone();
        bad[at] ^= 0x01;
        rejected(
            &s,
            &format!("signature byte {at} flipped"),
            &format!("{input}.{}", b64(&bad)),
            "signature is invalid",
        )
        .await;
    }
    // The claims changed under the original signature: alice becomes someone else.
    let (header, payload) = input.split_once('.').expect("header.payload");
    let claims = String::from_utf8(base64url_decode(payload).expect("payload")).expect("utf-8");
    let forged = claims.replace("\"alice\"", "\"admin\"");
    assert_ne!(forged, claims, "alice's token names alice: {claims}");
    rejected(
        &s,
        "claims changed",
        &format!("{header}.{}.{}", b64(forged.as_bytes()), b64(&sig)),
        "signature is invalid",
    )
    .await;
    // Truncated signature.
    rejected(
        &s,
        "signature cut short",
        &format!("{input}.{}", b64(&sig[..sig.len() / 2])),
        "signature is invalid",
    )
    .await;
    // The genuine token still works: nothing was cached for the forged ones.
    let r = s.send(api(&s, &format!("Bearer {token}")).as_bytes()).await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_sub_is_refused() {
    let (s, forge) = Stack::gogs_with_forge(|b| b).await;
    forge_is_trusted(&s, &forge).await;
    let mut claims = forge.claims();
    claims.as_object_mut().expect("object").remove("sub");
    rejected(
        &s,
        "no sub",
        &forge.token(&claims),
        "required claim sub is missing",
    )
    .await;
    let mut claims = forge.claims();
    claims["sub"] = json!("");
    rejected(
        &s,
        "empty sub",
        &forge.token(&claims),
        "required claim sub is missing",
    )
    .await;
    let mut claims = forge.claims();
    claims["sub"] = json!(42);
    rejected(&s, "numeric sub", &forge.token(&claims), "sub").await;
}
