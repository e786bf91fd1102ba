//! `Authorization` headers and the JWTs in them. The input is split at the first NUL: the
//! bytes before it are sent as a header value as they are (nothing the fuzzer writes can carry
//! a valid signature, so nothing may verify); the bytes after it are a JWT header and claims
//! (split at the next NUL) that this target signs with the trusted key, so the verifier's
//! claim checks are reached with every shape of claims. A token that verifies must have met
//! them: trusted issuer, our audience, not expired, a subject, the identity taken from them.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gatehouse::config::JwtIssuerConfig;
use gatehouse::identity::bearer::BearerVerifier;
use gatehouse::identity::credential::{self, Presented};
use gatehouse::identity::jwks::JwtIssuer;
use gatehouse::identity::metrics::IdentityMetrics;
use gatehouse::identity::outbound::Outbound;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const ISS: &str = "https://idp.example.test";
/// A P-256 key made for this target only (PKCS#8, base64 DER); it signs nothing else.
const KEY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQglYOefUhjoA0SmqYc\
8mnPJLD0AZ5Ef0NJ5C1I9s6tX6ehRANCAATcHvP3m+zFB//nP4hY1tjYQMDb4R68\
GGXXS2AXgeHdBxC1sA9dpDTJSBrHprO3o802BPA8Grlea3DGYwCts0vT";

struct Fixture {
    rt: tokio::runtime::Runtime,
    verifier: BearerVerifier,
    key: EncodingKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let metrics =
            Arc::new(IdentityMetrics::new(&prometheus::Registry::new()).expect("metrics"));
        let config = JwtIssuerConfig {
            issuer: ISS.into(),
            audiences: vec!["gatehouse".into()],
            algorithms: vec![Algorithm::ES256, Algorithm::RS256],
            jwks_uri: None,
            leeway: Duration::from_secs(30),
            username_claim: "preferred_username".into(),
            groups_claim: "groups".into(),
            ca_file: None,
        };
        let jwks = json!({"keys": [{"kty": "EC", "kid": "k1", "crv": "P-256",
            "x": "3B7z95vsxQf_5z-IWNbY2EDA2-EevBhl10tgF4Hh3Qc",
            "y": "ELWwD12kNMlIGsems7ejzTYE8DwauV5rcMZjAK2zS9M"}]});
        let issuer = rt.block_on(async {
            JwtIssuer::with_jwks(
                config,
                &jwks,
                Outbound::new(None, "fuzz").expect("http"),
                metrics.clone(),
            )
        });
        Fixture {
            verifier: BearerVerifier::new(vec![issuer], metrics),
            key: EncodingKey::from_ec_der(&STANDARD.decode(KEY).expect("key")),
            rt,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let (value, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };

    // As sent: never verifies.
    match credential::parse(value) {
        Presented::Bearer(token) | Presented::Basic(token) => {
            let verified = f.rt.block_on(f.verifier.verify(&token));
            assert!(verified.is_err(), "an unsigned token verified: {token:?}");
        }
        Presented::MalformedBasic | Presented::Other => {}
    }

    // Signed by the trusted key: verifies only with valid claims.
    let Some(rest) = rest else { return };
    let (header, claims) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b""[..], rest),
    };
    let Ok(claims) = serde_json::from_slice::<Map<String, Value>>(claims) else {
        return;
    };
    let mut h =
        serde_json::from_slice::<Header>(header).unwrap_or_else(|_| Header::new(Algorithm::ES256));
    h.alg = Algorithm::ES256;
    let Ok(token) = jsonwebtoken::encode(&h, &claims, &f.key) else {
        return;
    };
    let Ok(identity) = f.rt.block_on(f.verifier.verify(&token)) else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    assert_eq!(
        claims
            .get("iss")
            .and_then(Value::as_str)
            .map(|s| s.trim_end_matches('/')),
        Some(ISS)
    );
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == "gatehouse",
        Some(Value::Array(a)) => a.iter().any(|v| v == "gatehouse"),
        _ => false,
    };
    assert!(aud_ok, "verified with audience {:?}", claims.get("aud"));
    let exp = claims.get("exp").and_then(Value::as_u64).expect("exp");
    assert!(exp + 30 >= now, "verified after expiry");
    assert_eq!(
        Some(identity.subject.as_str()),
        claims.get("sub").and_then(Value::as_str),
        "the identity is the token's subject"
    );
    assert!(
        !claims.contains_key("nonce"),
        "an ID token verified as an access token"
    );
});
