//! Tokens for `bench/jwt.sh`: reads a PKCS#8 DER private key (RSA 2048 or P-256, as
//! `openssl genpkey` + `openssl pkcs8 -topk8 -nocrypt -outform DER` write it), writes the
//! matching JWKS and `--count` signed access tokens, one per line, each with its own `jti`
//! and subject (so a verifier cannot reuse an earlier result).
//!
//!   bench_jwt_tokens RS256|ES256 KEY.der ISSUER AUDIENCE COUNT JWKS_OUT TOKENS_OUT

use std::io::Write;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

enum Key {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ec(EcdsaKeyPair),
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, alg, key, iss, aud, count, jwks_out, tokens_out] = args.as_slice() else {
        return Err(
            "usage: bench_jwt_tokens RS256|ES256 KEY.der ISSUER AUDIENCE COUNT JWKS_OUT TOKENS_OUT"
                .into(),
        );
    };
    let der = std::fs::read(key)?;
    let (key, jwk) = match alg.as_str() {
        "RS256" => {
            let k = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der)?;
            let p = k.public_key();
            let jwk = serde_json::json!({"kty": "RSA", "kid": "bench", "use": "sig", "alg": "RS256",
                "n": b64(p.modulus().big_endian_without_leading_zero()),
                "e": b64(p.exponent().big_endian_without_leading_zero())});
            (Key::Rsa(k), jwk)
        }
        "ES256" => {
            let k = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der)?;
            let point = k.public_key().as_ref().to_vec();
            let jwk = serde_json::json!({"kty": "EC", "kid": "bench", "use": "sig", "alg": "ES256",
                "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])});
            (Key::Ec(k), jwk)
        }
        other => return Err(format!("unsupported algorithm {other}").into()),
    };
    std::fs::write(jwks_out, serde_json::json!({"keys": [jwk]}).to_string())?;

    let count: u64 = count.parse()?;
    let header = b64(
        serde_json::json!({"alg": alg, "kid": "bench", "typ": "at+jwt"})
            .to_string()
            .as_bytes(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let rng = SystemRandom::new();
    let mut out = std::io::BufWriter::new(std::fs::File::create(tokens_out)?);
    for i in 0..count {
        let claims = serde_json::json!({"iss": iss, "aud": aud, "sub": format!("ci-{i}"),
            "client_id": "bench-ci", "preferred_username": format!("ci-{i}"),
            "groups": ["engineering", "ci"], "iat": now, "exp": now + 6 * 3600,
            "jti": format!("bench-{i}")});
        let input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
        let sig = match &key {
            Key::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )?;
                sig
            }
            Key::Ec(k) => k.sign(&rng, input.as_bytes())?.as_ref().to_vec(),
        };
        writeln!(out, "{input}.{}", b64(&sig))?;
    }
    out.flush()?;
    Ok(())
}
