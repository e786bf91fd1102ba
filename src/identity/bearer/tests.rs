//! Threat-named tests of bearer token verification, with keys generated here and tokens
//! signed by hand (not by the library under test).

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::*;
use crate::config::JwtIssuerConfig;
use crate::identity::jwks::JwtIssuer;
use crate::identity::outbound::Outbound;

const ISS: &str = "https://idp.example.com";

struct Keys {
    rsa: aws_lc_rs::rsa::KeyPair,
    ec: EcdsaKeyPair,
    ed: Ed25519KeyPair,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Keys {
    fn new() -> Keys {
        Keys {
            rsa: aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
            ec: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            ed: Ed25519KeyPair::generate().unwrap(),
        }
    }

    fn jwks(&self) -> Value {
        let rsa = self.rsa.public_key();
        let point = self.ec.public_key().as_ref();
        json!({"keys": [
            {"kty": "RSA", "kid": "rs-1", "use": "sig", "n": b64(rsa.modulus().big_endian_without_leading_zero()), "e": b64(rsa.exponent().big_endian_without_leading_zero())},
            {"kty": "EC", "kid": "es-1", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])},
            {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": b64(self.ed.public_key().as_ref())},
        ]})
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = match header["alg"].as_str().unwrap_or("") {
            "RS256" => {
                let mut out = vec![0u8; self.rsa.public_modulus_len()];
                self.rsa
                    .sign(
                        &signature::RSA_PKCS1_SHA256,
                        &SystemRandom::new(),
                        input.as_bytes(),
                        &mut out,
                    )
                    .unwrap();
                out
            }
            "PS256" => {
                let mut out = vec![0u8; self.rsa.public_modulus_len()];
                self.rsa
                    .sign(
                        &signature::RSA_PSS_SHA256,
                        &SystemRandom::new(),
                        input.as_bytes(),
                        &mut out,
                    )
                    .unwrap();
                out
            }
            "ES256" => self
                .ec
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            "EdDSA" => self.ed.sign(input.as_bytes()).as_ref().to_vec(),
            _ => Vec::new(),
        };
        format!("{input}.{}", b64(&sig))
    }
}

fn config() -> JwtIssuerConfig {
    JwtIssuerConfig {
        issuer: ISS.into(),
        audiences: vec!["gatehouse".into()],
        algorithms: vec![
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::PS256,
            Algorithm::EdDSA,
        ],
        jwks_uri: None,
        leeway: Duration::from_secs(30),
        username_claim: "preferred_username".into(),
        groups_claim: "groups".into(),
        ca_file: None,
    }
}

fn verifier(keys: &Keys) -> BearerVerifier {
    let metrics = Arc::new(IdentityMetrics::new(&prometheus::Registry::new()).unwrap());
    let http = Outbound::new(None, "test").unwrap();
    let issuer = JwtIssuer::with_jwks(config(), &keys.jwks(), http, metrics.clone());
    BearerVerifier::new(vec![issuer], metrics)
}

fn claims() -> Value {
    let now = now();
    json!({"iss": ISS, "aud": "gatehouse", "sub": "alice-sub", "exp": now + 300, "iat": now, "preferred_username": "alice", "groups": ["engineering"], "client_id": "gatehouse-cli"})
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "kid": kid, "typ": "at+jwt"})
}

async fn check(v: &BearerVerifier, token: &str) -> Result<Arc<Identity>, Rejection> {
    v.verify(token).await
}

#[tokio::test]
async fn valid_tokens_of_every_allowed_algorithm_are_accepted() {
    let keys = Keys::new();
    let v = verifier(&keys);
    for (alg, kid) in [
        ("RS256", "rs-1"),
        ("PS256", "rs-1"),
        ("ES256", "es-1"),
        ("EdDSA", "ed-1"),
    ] {
        let id = check(&v, &keys.sign(&header(alg, kid), &claims()))
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(id.subject, "alice-sub");
        assert_eq!(id.username.as_deref(), Some("alice"));
        assert_eq!(id.groups, ["engineering"]);
        assert_eq!(id.client_id.as_deref(), Some("gatehouse-cli"));
    }
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let keys = Keys::new();
    let v = verifier(&keys);
    let input = format!(
        "{}.{}",
        b64(json!({"alg": "none"}).to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    assert!(check(&v, &format!("{input}.")).await.is_err());
    assert!(check(&v, &input).await.is_err());
}

#[tokio::test]
async fn hmac_signed_with_the_public_key_is_rejected() {
    let keys = Keys::new();
    let v = verifier(&keys);
    // The classic confusion: HS256 keyed with the RSA public key bytes.
    let public = keys.rsa.public_key().as_ref().to_vec();
    let input = format!(
        "{}.{}",
        b64(header("HS256", "rs-1").to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &public);
    let token = format!(
        "{input}.{}",
        b64(aws_lc_rs::hmac::sign(&key, input.as_bytes()).as_ref())
    );
    assert_eq!(
        check(&v, &token).await.unwrap_err(),
        Rejection::Algorithm("HS256".into())
    );
}

#[tokio::test]
async fn key_type_comes_from_the_jwk_not_the_token() {
    let keys = Keys::new();
    let v = verifier(&keys);
    // An EC signature presented under the RSA key's kid.
    let token = keys.sign(&header("ES256", "rs-1"), &claims());
    assert_eq!(check(&v, &token).await.unwrap_err(), Rejection::UnknownKey);
}

#[tokio::test]
async fn unknown_kid_is_rejected() {
    let keys = Keys::new();
    let v = verifier(&keys);
    let other = Keys::new();
    let token = other.sign(&header("RS256", "rs-9"), &claims());
    assert_eq!(check(&v, &token).await.unwrap_err(), Rejection::UnknownKey);
    // Same kid, different key: bad signature.
    let token = other.sign(&header("RS256", "rs-1"), &claims());
    assert_eq!(
        check(&v, &token).await.unwrap_err(),
        Rejection::BadSignature
    );
}

#[tokio::test]
async fn wrong_audience_or_issuer_is_rejected() {
    let keys = Keys::new();
    let v = verifier(&keys);
    let mut c = claims();
    c["aud"] = json!("another-api");
    assert_eq!(
        check(&v, &keys.sign(&header("RS256", "rs-1"), &c))
            .await
            .unwrap_err(),
        Rejection::WrongAudience
    );
    let mut c = claims();
    c["iss"] = json!("https://evil.example.com");
    assert_eq!(
        check(&v, &keys.sign(&header("RS256", "rs-1"), &c))
            .await
            .unwrap_err(),
        Rejection::UntrustedIssuer
    );
}

#[tokio::test]
async fn expired_and_future_tokens_are_rejected_beyond_the_leeway() {
    let keys = Keys::new();
    let v = verifier(&keys);
    let now = now();
    let mut c = claims();
    c["exp"] = json!(now - 120);
    assert_eq!(
        check(&v, &keys.sign(&header("RS256", "rs-1"), &c))
            .await
            .unwrap_err(),
        Rejection::Expired
    );
    let mut c = claims();
    c["exp"] = json!(now - 10); // inside the 30 s leeway
    assert!(
        check(&v, &keys.sign(&header("RS256", "rs-1"), &c))
            .await
            .is_ok()
    );
    let mut c = claims();
    c["nbf"] = json!(now + 600);
    assert_eq!(
        check(&v, &keys.sign(&header("RS256", "rs-1"), &c))
            .await
            .unwrap_err(),
        Rejection::NotYetValid
    );
    let mut c = claims();
    c["iat"] = json!(now + 600);
    assert_eq!(
        check(&v, &keys.sign(&header("RS256", "rs-1"), &c))
            .await
            .unwrap_err(),
        Rejection::NotYetValid
    );
}

#[tokio::test]
async fn missing_required_claims_are_rejected() {
    let keys = Keys::new();
    let v = verifier(&keys);
    for claim in ["exp", "aud", "sub"] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(claim);
        assert!(
            check(&v, &keys.sign(&header("RS256", "rs-1"), &c))
                .await
                .is_err(),
            "{claim}"
        );
    }
}

#[tokio::test]
async fn wrongly_typed_claims_are_rejected() {
    let keys = Keys::new();
    let v = verifier(&keys);
    for (claim, value) in [
        ("exp", json!("never")),
        ("groups", json!("engineering")),
        ("groups", json!([1, 2])),
        ("sub", json!(42)),
        ("email_verified", json!("true")),
        ("iat", json!("now")),
    ] {
        let mut c = claims();
        c[claim] = value.clone();
        let err = check(&v, &keys.sign(&header("RS256", "rs-1"), &c))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Rejection::BadClaim(_) | Rejection::MissingClaim(_)),
            "{claim}={value}: {err:?}"
        );
    }
}

#[tokio::test]
async fn id_token_used_as_access_token_is_rejected() {
    let keys = Keys::new();
    let v = verifier(&keys);
    let mut c = claims();
    c["nonce"] = json!("n-0S6_WzA2Mj");
    assert_eq!(
        check(&v, &keys.sign(&json!({"alg": "RS256", "kid": "rs-1"}), &c))
            .await
            .unwrap_err(),
        Rejection::IdToken
    );
    let token = keys.sign(
        &json!({"alg": "RS256", "kid": "rs-1", "typ": "id_token+jwt"}),
        &claims(),
    );
    assert_eq!(check(&v, &token).await.unwrap_err(), Rejection::IdToken);
}

#[tokio::test]
async fn garbage_is_malformed_never_a_panic() {
    let keys = Keys::new();
    let v = verifier(&keys);
    for t in [
        "",
        "a",
        "a.b",
        "a.b.c",
        "....",
        "eyJhbGciOiJSUzI1NiJ9.%%%.x",
        &"x".repeat(10_000),
    ] {
        assert!(check(&v, t).await.is_err(), "{t}");
    }
}

#[tokio::test]
async fn verified_tokens_are_cached_and_tampering_is_not() {
    let keys = Keys::new();
    let v = verifier(&keys);
    let token = keys.sign(&header("ES256", "es-1"), &claims());
    let a = check(&v, &token).await.unwrap();
    let b = check(&v, &token).await.unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "second verification should come from the cache"
    );
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert!(check(&v, &tampered).await.is_err());
}

#[tokio::test]
async fn a_full_cache_makes_room_for_tokens_in_use_not_for_one_off_tokens() {
    let keys = Keys::new();
    let v = verifier(&keys).with_capacity(3);
    let token = |n: u32| {
        let mut c = claims();
        c["jti"] = json!(format!("token-{n}"));
        keys.sign(&header("ES256", "es-1"), &c)
    };
    let one_off: Vec<String> = (0..3).map(token).collect();
    let steady = token(99);
    // One-off tokens fill the cache before the steady client's token is first seen.
    for t in &one_off {
        check(&v, t).await.unwrap();
    }
    assert_eq!(v.cache.len(), 3);
    let first = check(&v, &steady).await.unwrap();
    let again = check(&v, &steady).await.unwrap();
    assert!(
        Arc::ptr_eq(&first, &again),
        "the steady token must be cached although one-off tokens had filled the cache"
    );
    // Within the same second no second sweep runs, but the steady token, presented again,
    // survives the next one while tokens nobody presented again do not.
    assert_eq!(v.cache.len(), 1, "the unused one-off tokens were evicted");
    let later = token(100);
    check(&v, &later).await.unwrap();
    check(&v, &token(101)).await.unwrap();
    assert_eq!(v.cache.len(), 3);
    v.swept.store(0, std::sync::atomic::Ordering::Relaxed);
    check(&v, &token(102)).await.unwrap();
    let still = check(&v, &steady).await.unwrap();
    assert!(
        Arc::ptr_eq(&first, &still),
        "a token in use survives a sweep"
    );
    assert_eq!(
        v.cache.len(),
        2,
        "the sweep kept the steady token and made room for the newest"
    );
}

#[tokio::test]
async fn the_client_is_read_from_client_id_then_azp_then_okta_cid() {
    let keys = Keys::new();
    let v = verifier(&keys);
    let base = claims();
    for (field, value) in [("client_id", "a"), ("azp", "b"), ("cid", "c")] {
        let mut c = base.clone();
        let map = c.as_object_mut().unwrap();
        map.remove("client_id");
        map.insert(field.into(), json!(value));
        let id = check(&v, &keys.sign(&header("ES256", "es-1"), &c))
            .await
            .unwrap();
        assert_eq!(id.client_id.as_deref(), Some(value), "{field}");
    }
    // client_id wins over the others.
    let mut c = base.clone();
    c["azp"] = json!("other");
    c["cid"] = json!("other");
    let id = check(&v, &keys.sign(&header("ES256", "es-1"), &c))
        .await
        .unwrap();
    assert_eq!(id.client_id.as_deref(), Some("gatehouse-cli"));
    // Not a string: refused, not guessed.
    let mut c = base.clone();
    c.as_object_mut().unwrap().remove("client_id");
    c["cid"] = json!(42);
    assert!(
        check(&v, &keys.sign(&header("ES256", "es-1"), &c))
            .await
            .is_err()
    );
}
