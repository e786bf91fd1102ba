//! The gateway's signed statement of who it authenticated, for any upstream that wants to
//! verify it rather than trust a plain header: a short-lived EdDSA JWT in
//! `X-Gatehouse-Identity`, whose public key is published at `/.gatehouse/jwks.json`.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;

use super::session::now;
use super::{AuthMethod, Identity};
use crate::config::AssertionConfig;

pub const HEADER: &str = "x-gatehouse-identity";

pub struct Assertion {
    key: Ed25519KeyPair,
    kid: String,
    lifetime: u64,
    header_b64: String,
}

impl Assertion {
    pub fn load(config: &AssertionConfig) -> Result<Assertion, String> {
        let path = &config.key_file;
        let bytes =
            std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let der = match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(PrivateKeyDer::Pkcs8(k)) => k.secret_pkcs8_der().to_vec(),
            Ok(_) => {
                return Err(format!(
                    "{}: expected an Ed25519 key in PKCS#8 PEM (openssl genpkey -algorithm ed25519)",
                    path.display()
                ));
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let key = Ed25519KeyPair::from_pkcs8(&der)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der))
            .map_err(|_| format!("{}: not an Ed25519 private key", path.display()))?;
        let public = key.public_key().as_ref().to_vec();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public);
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
        let header_b64 =
            URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}).to_string());
        Ok(Assertion {
            key,
            kid,
            lifetime: config.lifetime.as_secs(),
            header_b64,
        })
    }

    /// A signed assertion for one request to one route.
    pub fn sign(
        &self,
        identity: &Identity,
        method: AuthMethod,
        audience: &str,
        request_id: &str,
    ) -> Option<HeaderValue> {
        let now = now();
        let claims = json!({
            "iss": "gatehouse",
            "aud": audience,
            "sub": identity.subject,
            "idp": identity.issuer,
            "preferred_username": identity.username,
            "email": identity.email,
            "email_verified": identity.email_verified,
            "groups": identity.groups,
            "client_id": identity.client_id,
            "amr": [method.as_str()],
            "iat": now,
            "exp": now + self.lifetime,
            "jti": request_id,
        });
        let mut token = format!(
            "{}.{}",
            self.header_b64,
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.key.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        HeaderValue::from_str(&token).ok()
    }

    /// The JWKS document with the public key.
    pub fn jwks(&self) -> String {
        json!({"keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "use": "sig",
            "alg": "EdDSA",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.key.public_key().as_ref()),
        }]})
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertions_verify_against_the_published_jwks() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("assertion.key");
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        );
        std::fs::write(&path, pem).unwrap();
        let a = Assertion::load(&AssertionConfig {
            key_file: path,
            lifetime: std::time::Duration::from_secs(60),
        })
        .unwrap();
        let identity = Identity {
            subject: "alice-sub".into(),
            issuer: "https://idp".into(),
            username: Some("alice".into()),
            email: None,
            email_verified: false,
            groups: vec!["engineering".into()],
            client_id: None,
            expires_at: 0,
        };
        let token = a
            .sign(&identity, AuthMethod::Session, "gogs", "req-1")
            .unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&a.jwks()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.set_audience(&["gogs"]);
        v.set_issuer(&["gatehouse"]);
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token.to_str().unwrap(), &key, &v).unwrap();
        assert_eq!(data.claims["preferred_username"], "alice");
        assert_eq!(data.claims["groups"][0], "engineering");
        assert_eq!(
            data.header.kid.as_deref(),
            jwks.keys[0].common.key_id.as_deref()
        );
        v.set_audience(&["lightstep"]);
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(token.to_str().unwrap(), &key, &v).is_err()
        );
    }
}
